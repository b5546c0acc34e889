/**
 * What every case of the fault matrix needs: fresh folder targets (one of them behind a FaultTarget, under
 * the retry wrapper as in production), the same folders opened without faults for the checks, and the
 * checks themselves.
 */
import { join } from 'node:path';
import { expect } from 'vitest';
import { listCatalog } from '../../src/catalog/catalog.js';
import { verifyStoredSnapshot } from '../../src/jobs/verify/check.js';
import { FileTarget } from '../../src/targets/file.js';
import { withRetry } from '../../src/targets/retry.js';
import { parseTargetUrl, type FileTargetSpec } from '../../src/targets/spec.js';
import type { Target } from '../../src/targets/target.js';
import { describeFault, FaultTarget, type Fault } from './fault-target.js';
import { fullMessage, MATRIX_RETRY, type MatrixCase, type Settled } from './fault-matrix.js';
import { tempDir } from './world.js';

/** Durability against power cuts is not what the matrix tests; skipping fsync makes its hundreds of cases cheap. */
const NO_FSYNC = { fsync: false };

export interface MatrixFolder {
  root: string;
  /** The folder of target `name`. */
  dir(name: string): string;
  /** Target `name` as a job sees it: the retry wrapper around the fault wrapper around the backend. */
  target(name: string): { target: Target; faults: FaultTarget };
  /** Target `name` without faults, for setting up and checking. */
  plain(name: string): Target;
  remove(): Promise<void>;
}

export async function matrixFolder(prefix: string): Promise<MatrixFolder> {
  const { dir: root, remove } = await tempDir(`matrix-${prefix}`);
  const spec = (name: string) => parseTargetUrl(name, `file://${join(root, name)}`) as FileTargetSpec;
  return {
    root,
    dir: (name) => join(root, name),
    target(name) {
      const faults = new FaultTarget(new FileTarget(spec(name), NO_FSYNC));
      return { target: withRetry(faults, MATRIX_RETRY), faults };
    },
    plain: (name) => withRetry(new FileTarget(spec(name), NO_FSYNC), MATRIX_RETRY),
    remove,
  };
}

/**
 * The outcome the case demands: the fault fired (else the case tests nothing), no hang was injected into an
 * operation without an AbortSignal, and the job failed, succeeded or was aborted as the matrix says; a
 * failure names the target the fault is on.
 */
export function expectOutcome(c: MatrixCase, settled: Settled<unknown>, faults: FaultTarget, fault: Fault): void {
  const what = `${c.job}: ${describeFault(fault)} on target "${c.row.on}"`;
  expect(faults.fired, `the fault never fired (${what}): the job does not do this operation, so the case tests nothing`).not.toEqual([]);
  expect(
    faults.unsignalled,
    `${what}: these operations were called without an AbortSignal, so a hang there could never be cancelled`,
  ).toEqual([]);
  const message = settled.status === 'rejected' ? fullMessage(settled.error) : '';
  switch (c.expect) {
    case 'aborted':
      expect(settled.status, `${what}: the job was aborted while an operation hung, yet it resolved`).toBe('rejected');
      break;
    case 'succeeds':
      expect(
        settled.status === 'resolved' ? 'resolved' : `rejected: ${message}`,
        `${what}: a retry should absorb this fault, yet the job failed`,
      ).toBe('resolved');
      break;
    case 'fails':
      expect(settled.status, `${what}: no retry absorbs this fault, yet the job reported success (fired: ${faults.fired.join('; ')})`).toBe(
        'rejected',
      );
      expect(message, `${what}: the failure does not name the target`).toContain(`"${c.row.on}"`);
      if (c.row.op === 'get' && c.row.at === 'body') {
        // A body that broke off or was destroyed: the operator is told which object it was.
        // Reads in parallel may each fail; the failure names at least one of the objects whose body failed.
        const keys = faults.fired.map((f) => /^get (\S+?):/.exec(f)?.[1]).filter((k): k is string => Boolean(k));
        if (keys.length)
          expect(
            keys.some((k) => message.includes(k)),
            `${what}: the failure names none of the objects whose body failed (${keys.join(', ')}): ${message}`,
          ).toBe(true);
        // A read that broke off says nothing of the stored bytes: it must not send the operator to another copy as damaged.
        if (c.kind === 'destroy' || c.kind === 'error')
          expect(message, `${what}: a read that broke off is reported as damage`).not.toMatch(/stored copy is damaged/);
      }
      break;
    case 'settles':
      break;
    case 'either':
      if (settled.status === 'rejected') expect(message, `${what}: the failure does not name the target`).toContain(`"${c.row.on}"`);
      break;
  }
}

/** Every snapshot with a manifest on `target` whose artifact is missing or does not hash to the manifest, except `allowed` ids. */
export async function visibleProblems(target: Target, database: string, allowed: Set<string> = new Set()): Promise<string[]> {
  const problems: string[] = [];
  for (const s of (await listCatalog(target, database)).snapshots) {
    if (allowed.has(s.id)) continue;
    const outcome = await verifyStoredSnapshot(target, database, s.id);
    if (!outcome.ok) problems.push(`target "${target.name}" shows snapshot ${s.id} without whole data: ${outcome.error}`);
  }
  return problems;
}

/** Ids of `target`'s snapshots whose bytes match their manifest. */
export async function goodIds(target: Target, database: string): Promise<string[]> {
  const ids: string[] = [];
  for (const s of (await listCatalog(target, database)).snapshots) {
    if ((await verifyStoredSnapshot(target, database, s.id)).ok) ids.push(s.id);
  }
  return ids.sort();
}
