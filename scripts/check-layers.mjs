#!/usr/bin/env node
/**
 * No two parts of src/ import each other, and no longer loop either (a -> b -> c -> a). A part is a top-level
 * folder of src/ (agent, jobs, status...) or a file directly in src/ (config.ts, errors.ts...). Every relative import, re-export and dynamic import of
 * src/**\/*.ts counts, `import type` included: a cycle of types is still two parts that cannot be read or
 * changed apart. Prints each pair with one file on each side and exits 1; exits 0 when there is none.
 * Usage: node scripts/check-layers.mjs [src-dir]
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const IMPORT_RE =
  /(?:^|[\s;])(?:import|export)\s+(?:type\s+)?(?:[\w*{}\s,$]+?\s+from\s+)?['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/g;

function tsFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return tsFiles(path);
    return e.name.endsWith('.ts') ? [path] : [];
  });
}

/** The part of src/ a path belongs to: its top-level folder, or the file's name without .ts/.js. */
function partOf(srcDir, path) {
  const rel = relative(srcDir, path);
  if (rel.startsWith('..')) return undefined;
  const [first, ...rest] = rel.split(sep);
  return rest.length ? first : first.replace(/\.(ts|js)$/, '');
}

/** Comments removed, so that an example in a comment is not read as an import. */
function code(text) {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
}

/** Every edge between two different parts: Map "from -> to" => first file seen making it. */
export function partEdges(srcDir) {
  const edges = new Map();
  for (const file of tsFiles(srcDir)) {
    const from = partOf(srcDir, file);
    for (const m of code(readFileSync(file, 'utf8')).matchAll(IMPORT_RE)) {
      const spec = m[1] ?? m[2];
      if (!spec.startsWith('.')) continue;
      const to = partOf(srcDir, resolve(dirname(file), spec));
      if (to === undefined || to === from) continue;
      const key = `${from} -> ${to}`;
      if (!edges.has(key)) edges.set(key, { from, to, file: relative(srcDir, file), spec });
    }
  }
  return edges;
}

/** Pairs of parts that import each other, each with an example import on both sides. */
export function mutualImports(srcDir) {
  const edges = partEdges(srcDir);
  const pairs = [];
  for (const e of edges.values()) {
    const back = edges.get(`${e.to} -> ${e.from}`);
    if (back && e.from < e.to) pairs.push({ a: e.from, b: e.to, ab: e, ba: back });
  }
  return pairs;
}

/** A loop of three or more parts (pairs are reported by mutualImports), as its edges; undefined when none. */
export function longerCycle(srcDir) {
  const edges = [...partEdges(srcDir).values()];
  const out = new Map();
  for (const e of edges) out.set(e.from, [...(out.get(e.from) ?? []), e]);
  const done = new Set();
  const path = [];
  const visit = (part) => {
    const at = path.findIndex((e) => e.from === part);
    if (at >= 0) return path.slice(at).length > 2 ? path.slice(at) : undefined;
    if (done.has(part)) return undefined;
    for (const e of out.get(part) ?? []) {
      path.push(e);
      const found = visit(e.to);
      path.pop();
      if (found) return found;
    }
    done.add(part);
    return undefined;
  };
  for (const part of out.keys()) {
    const found = visit(part);
    if (found) return found;
  }
  return undefined;
}

export function describeCycle(cycle) {
  return (
    `${[...cycle.map((e) => e.from), cycle[0].from].join(' -> ')}: ` + cycle.map((e) => `src/${e.file} imports '${e.spec}'`).join(', ')
  );
}

export function describePair({ a, b, ab, ba }) {
  return `${a} <-> ${b}: src/${ab.file} imports '${ab.spec}', and src/${ba.file} imports '${ba.spec}'`;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const srcDir = resolve(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'src'));
  const pairs = mutualImports(srcDir);
  if (pairs.length) {
    process.stderr.write(
      `check-layers: ${pairs.length} pair(s) of parts of ${srcDir} import each other; ` +
        'move the shared piece to the lower part (or to src/util/) so imports go one way:\n' +
        pairs.map((p) => `  ${describePair(p)}\n`).join(''),
    );
    process.exit(1);
  }
  const cycle = longerCycle(srcDir);
  if (cycle) {
    process.stderr.write(
      `check-layers: parts of ${srcDir} import each other in a loop; move the shared piece to ` +
        `the lowest part (or to src/util/) so imports go one way:\n  ${describeCycle(cycle)}\n`,
    );
    process.exit(1);
  }
  process.stdout.write(`check-layers: no two parts of ${srcDir} import each other, and no loop\n`);
}
