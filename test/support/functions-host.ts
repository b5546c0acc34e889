/**
 * The Functions host cannot run here, so tests stand in for it at its boundary: the `@azure/functions-core`
 * module the host injects into the worker. @azure/functions then runs its real registration code and hands
 * us the function metadata (bindings, schedules, routes, auth levels) exactly as the host would receive it.
 */
import Module from 'node:module';

export interface Registration {
  name: string;
  bindings: Record<
    string,
    { type: string; direction: string; schedule?: string; route?: string; authLevel?: string; methods?: string[]; [k: string]: unknown }
  >;
  handler: (...args: unknown[]) => unknown;
}

export const registrations: Registration[] = [];

const fakeCore = {
  version: '3.10.1',
  hostVersion: '4.1040.0',
  setProgrammingModel: () => undefined,
  getProgrammingModel: () => undefined,
  registerHook: () => ({ dispose: () => undefined }),
  registerFunction: (metadata: { name: string; bindings: Registration['bindings'] }, handler: Registration['handler']) => {
    registrations.push({ name: metadata.name, bindings: metadata.bindings, handler });
    return { dispose: () => undefined };
  },
  log: () => undefined,
};

type Loader = (request: string, parent: unknown, isMain: boolean) => unknown;
const mod = Module as unknown as { _load: Loader };
const original = mod._load;
mod._load = function load(this: unknown, request: string, parent: unknown, isMain: boolean) {
  if (request === '@azure/functions-core') return fakeCore;
  return original.call(this, request, parent, isMain);
};

export function registration(name: string): Registration {
  const r = registrations.find((x) => x.name === name);
  if (!r) throw new Error(`function "${name}" was not registered; registered: ${registrations.map((x) => x.name).join(', ')}`);
  return r;
}
