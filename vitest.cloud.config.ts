import { defineConfig } from 'vitest/config';

/**
 * `npm run test:cloud`: the target conformance suite against real Azure Blob and R2, from TCAB_TEST_AZBLOB_*
 * and TCAB_TEST_R2_* (README, "Testing against Azure Blob and R2"). Not part of `npm test`.
 */
export default defineConfig({
  test: {
    include: ['test/targets/cloud-conformance.test.ts'],
    // A real service over the internet: slower than the emulators, and one file at a time.
    testTimeout: 300_000,
    hookTimeout: 300_000,
    pool: 'forks',
    maxWorkers: 1,
  },
});
