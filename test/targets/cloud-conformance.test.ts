/**
 * The target conformance suite against real Azure Blob and Cloudflare R2: `npm run test:cloud` only (its
 * own config, vitest.cloud.config.ts; `npm test` does not include this file). It fails, naming them, when
 * the TCAB_TEST_AZBLOB_* / TCAB_TEST_R2_* variables are missing. Each run works under its own prefix and
 * removes everything it wrote.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Target } from '../../src/targets/target.js';
import { azblobCloudTarget, r2CloudTarget, removeEverything, requireCloudVariables, runPrefix } from '../support/cloud-targets.js';
import { describeTargetConformance, listKeys, MiB } from './conformance.js';

requireCloudVariables();

const PREFIX = runPrefix();
const TUNING = { pageSize: 4, partSize: 5 * MiB };
let fresh = 0;

for (const cloud of [
  { name: 'azblob (TCAB_TEST_AZBLOB_*)', open: azblobCloudTarget },
  { name: 'r2 (TCAB_TEST_R2_*)', open: r2CloudTarget },
]) {
  const whole: Target = cloud.open(PREFIX);
  describeTargetConformance(cloud.name, async () => cloud.open(`${PREFIX}/${fresh++}`, TUNING), { pageSize: TUNING.pageSize });

  describe(`${cloud.name}: clean-up of the run's prefix`, () => {
    it(`wrote under ${PREFIX}/ only, and removes all of it`, async () => {
      expect((await listKeys(whole, '')).length).toBeGreaterThan(0);
      await removeEverything(whole);
      expect(await listKeys(whole, '')).toEqual([]);
    });
  });

  // Should a test above fail before the clean-up test, what it wrote is still removed.
  afterAll(async () => {
    await removeEverything(whole);
  });
}
