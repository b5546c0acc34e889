/**
 * ARM resource ids of Azure Database for PostgreSQL flexible servers. ARM treats ids case-insensitively,
 * so every comparison here does too: a source server must never be mistaken for "another" server because
 * the portal and the CLI spell its resource group differently.
 */
export interface ServerRef {
  /** The id as configured, e.g. /subscriptions/<uuid>/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/name */
  id: string;
  subscriptionId: string;
  resourceGroup: string;
  name: string;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// Azure's rule for resource group names: 1-90 of letters, digits, '_', '-', '.', '(' and ')', not ending in '.'.
const RESOURCE_GROUP_RE = /^[-\w.()]{0,89}[-\w()]$/;
/** Azure's rule for flexible server names: 3-63 lower-case letters, digits and hyphens, no hyphen at either end. */
export const SERVER_NAME_RE = /^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/;
const ID_RE = /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/Microsoft\.DBforPostgreSQL\/flexibleServers\/([^/]+)$/i;

/** Throws an Error saying what is wrong with the id (the caller adds which setting it came from). */
export function parseServerId(raw: string): ServerRef {
  const id = raw.trim().replace(/\/+$/, '');
  const m = ID_RE.exec(id);
  if (!m) {
    throw new Error(
      `"${raw}" is not a flexible server resource id (expected /subscriptions/<subscription id>/resourceGroups/<group>/providers/Microsoft.DBforPostgreSQL/flexibleServers/<server name>)`,
    );
  }
  const [, subscriptionId, resourceGroup, name] = m as unknown as [string, string, string, string];
  if (!UUID_RE.test(subscriptionId)) throw new Error(`"${subscriptionId}" in "${raw}" is not a subscription id (a UUID)`);
  if (!RESOURCE_GROUP_RE.test(resourceGroup)) throw new Error(`"${resourceGroup}" in "${raw}" is not a resource group name`);
  if (!SERVER_NAME_RE.test(name)) {
    throw new Error(
      `"${name}" in "${raw}" is not a flexible server name (3-63 lower-case letters, digits and '-', not starting or ending with '-')`,
    );
  }
  return { id, subscriptionId: subscriptionId.toLowerCase(), resourceGroup, name };
}

export function serverId(subscriptionId: string, resourceGroup: string, name: string): string {
  return `/subscriptions/${subscriptionId}/resourceGroups/${resourceGroup}/providers/Microsoft.DBforPostgreSQL/flexibleServers/${name}`;
}

export function sameResourceId(a: string | undefined, b: string | undefined): boolean {
  if (!a || !b) return false;
  const norm = (s: string) => s.trim().replace(/\/+$/, '').toLowerCase();
  return norm(a) === norm(b);
}
