/**
 * Golden files: each <case>.in.json is what `tcab-backup retention plan` reads on stdin, and <case>.out.json
 * what it must write. The expectations were checked by hand (golden/README.md says why each is right) and,
 * for the restic-* cases, against restic's own published results for the same snapshots and policy.
 * To rewrite them after a deliberate change: TCAB_UPDATE_GOLDEN=1 npx vitest run test/retention/golden.test.ts
 * and review the diff before committing it.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runRetentionPlanCommand } from '../../src/retention/plan-command.js';

const dir = join(fileURLToPath(new URL('.', import.meta.url)), 'golden');
const cases = readdirSync(dir)
  .filter((f) => f.endsWith('.in.json'))
  .map((f) => f.slice(0, -'.in.json'.length))
  .sort();
const update = process.env.TCAB_UPDATE_GOLDEN === '1';

describe('retention plan golden files', () => {
  it('has the cases the policy semantics call for', () => {
    expect(cases.length).toBeGreaterThanOrEqual(30);
  });

  for (const name of cases) {
    it(name, () => {
      const input = readFileSync(join(dir, `${name}.in.json`), 'utf8');
      const output = runRetentionPlanCommand(input);
      if (update) writeFileSync(join(dir, `${name}.out.json`), output);
      const got = JSON.parse(output) as { keep: Array<{ id: string; reasons: string[] }>; remove: string[] };
      const want = JSON.parse(readFileSync(join(dir, `${name}.out.json`), 'utf8'));
      expect(got).toEqual(want);

      // Every snapshot lands in exactly one list, and every kept one says why.
      const ids = (JSON.parse(input) as { snapshots: Array<{ id: string }> }).snapshots.map((s) => s.id);
      const planned = [...got.keep.map((k) => k.id), ...got.remove];
      expect([...planned].sort()).toEqual([...ids].sort());
      for (const k of got.keep) expect(k.reasons.length).toBeGreaterThan(0);
    });
  }
});
