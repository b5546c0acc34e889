/**
 * Drill servers: how they are named and tagged, and the guards that every delete passes first. A delete
 * of the wrong server is the one mistake a backup tool must never make, so the drill's own cleanup and
 * the sweeper share this one check.
 */
import type { Server } from '@azure/arm-postgresql-flexible';
import { sameResourceId, type ServerRef } from './resource-id.js';

export const DRILL_TAG = 'tcab-backup-drill';
export const DRILL_SOURCE_TAG = 'tcab-backup-drill-source';
export const DRILL_CREATED_TAG = 'tcab-backup-drill-created';
export const DRILL_ID_TAG = 'tcab-backup-drill-id';
export const DRILL_NAME_PREFIX = 'tcab-drill-';
/** ARM's limit on a tag value. */
const MAX_TAG_VALUE = 256;

/**
 * "tcab-drill-<source>-<8 hex of the drill id>", within Azure's rules (3-63 lower-case letters, digits and
 * '-', not starting or ending with '-'): the source part is cut to fit and stripped of trailing hyphens.
 */
export function drillServerName(sourceName: string, drillId: string): string {
  const suffix = drillId.slice(-8).toLowerCase();
  const room = 63 - DRILL_NAME_PREFIX.length - 1 - suffix.length;
  const source = sourceName
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '')
    .slice(0, room)
    .replace(/-+$/, '');
  return `${DRILL_NAME_PREFIX}${source ? source + '-' : ''}${suffix}`;
}

export function drillTags(source: ServerRef, drillId: string, createdAt: Date): Record<string, string> {
  if (source.id.length > MAX_TAG_VALUE) {
    throw new Error(`the resource id of "${source.name}" is longer than ${MAX_TAG_VALUE} characters, the most an Azure tag can hold`);
  }
  return {
    [DRILL_TAG]: 'true',
    [DRILL_SOURCE_TAG]: source.id,
    [DRILL_CREATED_TAG]: createdAt.toISOString(),
    [DRILL_ID_TAG]: drillId,
  };
}

/** When the drill server was made: its creation tag, else ARM's record of its creation, else unknown. */
export function drillServerCreatedAt(server: Server): Date | undefined {
  const tagged = server.tags?.[DRILL_CREATED_TAG];
  const candidates = [
    tagged ? new Date(tagged) : undefined,
    server.systemData?.createdAt ? new Date(server.systemData.createdAt) : undefined,
  ];
  return candidates.find((d) => d !== undefined && !Number.isNaN(d.getTime()));
}

/**
 * Why `server` must not be deleted as a drill server of `source`, or undefined when it may be.
 * `sources` are every configured server: none of them is ever deleted, whatever its tags say.
 */
export function deleteRefusal(server: Server, source: ServerRef, sources: ServerRef[]): string | undefined {
  const name = server.name ?? '(unnamed)';
  if (!server.id) return `server "${name}" has no resource id`;
  if ([source, ...sources].some((s) => sameResourceId(s.id, server.id))) return `server "${name}" is a source server`;
  if (server.tags?.[DRILL_TAG] !== 'true') return `server "${name}" is not tagged ${DRILL_TAG}=true`;
  if (!server.name?.startsWith(DRILL_NAME_PREFIX)) return `server "${name}" does not carry the drill name prefix "${DRILL_NAME_PREFIX}"`;
  if (!sameResourceId(server.tags?.[DRILL_SOURCE_TAG], source.id)) {
    return `server "${name}" is a drill server of another source (${server.tags?.[DRILL_SOURCE_TAG] ?? 'none'}), not of "${source.name}"`;
  }
  return undefined;
}
