/**
 * Headless Chromium driven from the command line (Debian's `chromium` package): the page is rendered by a real
 * browser engine, with no test-only browser library. A missing browser fails the test with what to install.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { tempDir } from '../support/world.js';

const run = promisify(execFile);
const CANDIDATES = ['chromium', 'chromium-browser', 'google-chrome'];

export async function findChromium(): Promise<string> {
  for (const name of CANDIDATES) {
    try {
      await run(name, ['--version'], { timeout: 30_000 });
      return name;
    } catch {
      // try the next name
    }
  }
  throw new Error(
    `No Chromium found (tried ${CANDIDATES.join(', ')}): the status page test renders the page in a real browser. Install it: apt-get install -y chromium`,
  );
}

async function chromium(binary: string, args: string[], url: string): Promise<string> {
  const { dir: profile, remove } = await tempDir('chromium');
  try {
    const { stdout } = await run(
      binary,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--hide-scrollbars',
        `--user-data-dir=${profile}`,
        ...args,
        url,
      ],
      { timeout: 90_000, maxBuffer: 64 * 1024 * 1024 },
    );
    return stdout;
  } finally {
    await remove();
  }
}

/** The DOM after the browser parsed and laid out the page. */
export function dumpDom(binary: string, url: string): Promise<string> {
  return chromium(binary, ['--dump-dom'], url);
}

export async function screenshot(binary: string, url: string, png: string, size = '1280,1600'): Promise<void> {
  await chromium(binary, [`--screenshot=${png}`, `--window-size=${size}`], url);
}
