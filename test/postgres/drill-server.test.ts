import type { Server } from '@azure/arm-postgresql-flexible';
import { describe, expect, it } from 'vitest';
import {
  DRILL_CREATED_TAG,
  DRILL_SOURCE_TAG,
  DRILL_TAG,
  deleteRefusal,
  drillServerCreatedAt,
  drillServerName,
  drillTags,
} from '../../src/postgres/drill-server.js';
import { newDrillId } from '../../src/catalog/layout.js';
import { judgeRestoredData } from '../../src/postgres/drill-validate.js';
import { pgCurrentDrillKey, pgDrillKey, pgStatusKey } from '../../src/postgres/records.js';
import { parseServerId, sameResourceId, SERVER_NAME_RE } from '../../src/postgres/resource-id.js';

const SUB = '0b1f6471-1bf0-4dda-aec3-cb9272f09590';
const sourceId = (name: string, rg = 'rg-tcab') =>
  `/subscriptions/${SUB}/resourceGroups/${rg}/providers/Microsoft.DBforPostgreSQL/flexibleServers/${name}`;
const source = parseServerId(sourceId('tcab-prod'));

describe('drill server names', () => {
  it("follow Azure's rules for any source name, and start with the drill prefix", () => {
    const id = newDrillId(new Date('2026-11-24T16:13:00.123Z'));
    expect(id).toMatch(/^20261124T161300Z-[0-9a-f]{8}$/);
    for (const name of ['abc', 'tcab-prod', 'a'.repeat(63), 'x-'.repeat(21) + 'y', 'db-' + '9'.repeat(40) + '-end', '-'.repeat(3)]) {
      const drill = drillServerName(name, id);
      expect(drill, name).toMatch(SERVER_NAME_RE);
      expect(drill.length, name).toBeLessThanOrEqual(63);
      expect(drill.startsWith('tcab-drill-'), name).toBe(true);
      expect(drill.endsWith(id.slice(-8)), name).toBe(true);
      expect(drill, name).not.toMatch(/--/);
    }
    expect(drillServerName('tcab-prod', id)).toBe(`tcab-drill-tcab-prod-${id.slice(-8)}`);
  });

  it('are tagged with the source, the creation time and the drill id', () => {
    const at = new Date('2026-11-24T16:13:00Z');
    expect(drillTags(source, '20261124T161300Z-3f9a1c2e', at)).toEqual({
      'tcab-backup-drill': 'true',
      'tcab-backup-drill-source': source.id,
      'tcab-backup-drill-created': '2026-11-24T16:13:00.000Z',
      'tcab-backup-drill-id': '20261124T161300Z-3f9a1c2e',
    });
    // The longest resource group and server names Azure allows make an id longer than a tag can hold.
    const long = parseServerId(sourceId('t'.repeat(63), 'r'.repeat(90)));
    expect(() => drillTags(long, '20261124T161300Z-3f9a1c2e', at)).toThrow(/longer than 256 characters, the most an Azure tag can hold/);
  });
});

describe('the delete guard', () => {
  const drill = (over: Partial<Server> = {}): Server => ({
    id: sourceId('tcab-drill-tcab-prod-3f9a1c2e'),
    name: 'tcab-drill-tcab-prod-3f9a1c2e',
    location: 'westeurope',
    tags: { [DRILL_TAG]: 'true', [DRILL_SOURCE_TAG]: source.id, [DRILL_CREATED_TAG]: '2026-11-24T16:13:00Z' },
    ...over,
  });

  it('allows a tagged, prefixed drill server of this source', () => {
    expect(deleteRefusal(drill(), source, [source])).toBeUndefined();
    // ARM ids are case-insensitive: a differently spelled source tag still names this source.
    expect(
      deleteRefusal(drill({ tags: { ...drill().tags, [DRILL_SOURCE_TAG]: source.id.toUpperCase() } }), source, [source]),
    ).toBeUndefined();
  });

  it('refuses a server without the drill tag', () => {
    expect(deleteRefusal(drill({ tags: {} }), source, [source])).toMatch(/is not tagged tcab-backup-drill=true/);
    expect(deleteRefusal(drill({ tags: { ...drill().tags, [DRILL_TAG]: 'True' } }), source, [source])).toMatch(/is not tagged/);
  });

  it('refuses the source server, however its id is spelled, even when tagged and prefixed', () => {
    const sneaky = drill({ id: source.id.toUpperCase().replace(SUB.toUpperCase(), SUB), name: 'tcab-prod' });
    expect(deleteRefusal(sneaky, source, [source])).toMatch(/is a source server/);
    const other = parseServerId(sourceId('tcab-drill-other'));
    expect(deleteRefusal(drill({ id: other.id, name: other.name }), source, [source, other])).toMatch(/is a source server/);
  });

  it('refuses a server whose name lacks the drill prefix, or that was made for another source', () => {
    expect(deleteRefusal(drill({ name: 'tcab-staging' }), source, [source])).toMatch(/does not carry the drill name prefix "tcab-drill-"/);
    expect(deleteRefusal(drill({ tags: { ...drill().tags, [DRILL_SOURCE_TAG]: sourceId('tcab-eu') } }), source, [source])).toMatch(
      /drill server of another source/,
    );
    expect(deleteRefusal(drill({ id: undefined }), source, [source])).toMatch(/has no resource id/);
  });

  it("dates a drill server by its tag, else by ARM's creation time, else not at all", () => {
    expect(drillServerCreatedAt(drill())?.toISOString()).toBe('2026-11-24T16:13:00.000Z');
    expect(
      drillServerCreatedAt(
        drill({ tags: { [DRILL_TAG]: 'true', [DRILL_CREATED_TAG]: 'soon' }, systemData: { createdAt: new Date('2026-11-20T00:00:00Z') } }),
      )?.toISOString(),
    ).toBe('2026-11-20T00:00:00.000Z');
    expect(drillServerCreatedAt(drill({ tags: { [DRILL_TAG]: 'true' } }))).toBeUndefined();
  });
});

describe('judging restored data', () => {
  const point = new Date('2026-11-24T12:00:00Z');
  it('passes runs up to the restore point within the allowed data age, and measures the recovery point', () => {
    const { checks, recoveryPointMs } = judgeRestoredData(120, new Date('2026-11-24T11:40:00Z'), point, 86_400_000);
    expect(checks.every((c) => c.ok)).toBe(true);
    expect(recoveryPointMs).toBe(20 * 60_000);
  });
  it('fails an empty table, data after the restore point, and data too old', () => {
    expect(
      judgeRestoredData(0, null, point, 86_400_000)
        .checks.filter((c) => !c.ok)
        .map((c) => c.name),
    ).toEqual(['has-runs', 'newest-run']);
    const after = judgeRestoredData(5, new Date('2026-11-24T12:30:00Z'), point, 86_400_000);
    expect(after.checks.find((c) => !c.ok)?.detail).toMatch(/is 30m after the restore point .* did not stop at the requested point/);
    const old = judgeRestoredData(5, new Date('2026-11-20T12:00:00Z'), point, 86_400_000);
    expect(old.checks.find((c) => !c.ok)?.detail).toMatch(
      /4d older than the restore point; at most 1d is allowed \(TCAB_BACKUP_PG_DRILL_MAX_DATA_AGE\)/,
    );
  });
});

describe('resource ids and keys', () => {
  it('compares ids case-insensitively and keeps records per server', () => {
    expect(sameResourceId(source.id, source.id.toLowerCase() + '/')).toBe(true);
    expect(sameResourceId(source.id, sourceId('tcab-prod2'))).toBe(false);
    expect(sameResourceId(undefined, source.id)).toBe(false);
    expect(pgDrillKey('tcab-prod', '20261124T161300Z-3f9a1c2e')).toBe('drills/pg-tcab-prod/20261124T161300Z-3f9a1c2e.json');
    expect(pgCurrentDrillKey('tcab-prod')).toBe('drills/pg-tcab-prod/current.json');
    expect(pgStatusKey('a'.repeat(63))).toBe(`status/pg-${'a'.repeat(63)}.json`);
    expect(() => pgDrillKey('tcab-prod', '../x')).toThrow(/not a drill id/);
    expect(() => pgStatusKey('../etc')).toThrow(/not a flexible server name/);
  });
});
