/**
 * The CLI never exits 0 for a job that did not finish. A command whose work waits for an event nothing will
 * ever emit leaves Node with an empty event loop, and Node then exits with status 0 as if all went well:
 * that is how a snapshot with one dead target used to "succeed" in silence. Every such wait known is fixed,
 * so the guard is checked here with a command that makes exactly that wait, a 'drain' from a stream that
 * is already destroyed, run through the CLI's real process entry.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

const MAIN = pathToFileURL(join(import.meta.dirname, '..', 'dist', 'src', 'cli', 'main.js')).href;

/** Runs the CLI entry in its own process with one extra command, `stall`, beside the real ones. */
function run(args: string[], env: Record<string, string> = {}) {
  const script = `
    import { PassThrough } from 'node:stream';
    import { runAsProcess } from ${JSON.stringify(MAIN)};
    import { COMMANDS } from ${JSON.stringify(MAIN)};
    const stall = async (_args, ctx) => {
      ctx.logger.info('upload.waiting', { target: 'r2' });
      const sink = new PassThrough();
      sink.destroy();
      if (!sink.write('x')) await new Promise((resolve) => sink.once('drain', resolve));
      return 0;
    };
    const finish = async (_args, ctx) => {
      ctx.logger.info('work.done');
      return 0;
    };
    runAsProcess(process.argv.slice(1), { commands: { ...COMMANDS, stall, finish } });
  `;
  return spawnSync(process.execPath, ['--input-type=module', '-e', script, ...args], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { PATH: process.env.PATH, ...env },
  });
}

describe('a command that stalls', () => {
  it('exits 1 and says which command stalled and after which step', () => {
    const r = run(['stall']);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      'tcab-backup stall stalled after its last logged step, upload.waiting (target "r2"): it was waiting for something that can no longer happen, ' +
        'so it did not finish. Check: the targets and the agent it was using (tcab-backup list); run it again with TCAB_LOG_LEVEL=debug to see each step, ' +
        'and report the stall with that log\n',
    );
  });

  it('says so on stdout too when JSON was asked for', () => {
    const r = run(['stall', '--json']);
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual({
      ok: false,
      error: expect.stringMatching(/^tcab-backup stall stalled after its last logged step, upload\.waiting/),
    });
  });

  it('leaves a command that finishes alone, with its own exit status', () => {
    const r = run(['finish']);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    expect(run(['no-such-command']).status).toBe(2);
  });
});
