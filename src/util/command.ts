/** Command lines given in settings, taken apart without a shell. */

/**
 * Splits the configured command into words without a shell: words are separated by spaces or tabs; a word
 * may be quoted with "..." or '...' to hold spaces (no escapes, no variables, no globbing).
 */
export function splitCommand(text: string): string[] {
  const words: string[] = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let current: string | undefined;
  let lastEnd = -1;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const piece = m[1] ?? m[2] ?? m[3] ?? '';
    // Pieces written together ("a"b) form one word, as in a shell.
    if (current !== undefined && m.index === lastEnd) current += piece;
    else {
      if (current !== undefined) words.push(current);
      current = piece;
    }
    lastEnd = m.index + m[0].length;
  }
  if (current !== undefined) words.push(current);
  if (/["']/.test(text.replace(/"[^"]*"|'[^']*'/g, ''))) throw new Error('has an unmatched quote');
  return words;
}
