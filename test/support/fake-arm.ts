/**
 * A stand-in for Azure Resource Manager, for the one part of Azure that cannot run here: the
 * Microsoft.DBforPostgreSQL/flexibleServers resource provider (API 2025-08-01). It speaks the wire
 * protocol the real SDK client expects: HTTPS (a self-signed certificate made with the openssl CLI at
 * start), bearer tokens, ARM error bodies ({"error":{"code","message"}}), and long-running operations with
 * Azure-AsyncOperation and Location headers. It checks what the real service checks for a point-in-time
 * restore (name rules, source exists, restore point within the window, same region).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type Server as HttpsServer } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from './world.js';

const run = promisify(execFile);
export const FAKE_ARM_API_VERSION = '2025-08-01';
const PROVIDER = 'Microsoft.DBforPostgreSQL';
const NAME_RE = /^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/;

export interface FakeServer {
  subscriptionId: string;
  resourceGroup: string;
  name: string;
  location: string;
  state: string;
  tags: Record<string, string>;
  backupRetentionDays: number;
  geoRedundantBackup: 'Enabled' | 'Disabled';
  earliestRestoreDate: Date | undefined;
  /** ARM's systemData.createdAt; undefined leaves systemData out. */
  createdAt: Date | undefined;
  fullyQualifiedDomainName: string | undefined;
  createMode?: string;
  sourceServerResourceId?: string;
  pointInTimeUTC?: string;
}

export interface FakeBackup {
  name: string;
  backupType: 'Full' | 'Customer On-Demand';
  completedTime: Date;
}

export interface OperationScript {
  /** Polls of the operation status answered "InProgress" before the outcome. */
  pollsUntilDone: number;
  outcome: 'succeed' | 'fail' | 'never';
  error?: { code: string; message: string };
}

export interface RestoreScript extends OperationScript {
  /** On failure, leave the half-made server behind (state Disabled) rather than remove it. */
  keepServerOnFailure?: boolean;
  /** fullyQualifiedDomainName of a restored server. */
  fqdn?: string;
}

export interface RecordedRequest {
  method: string;
  path: string;
  body: unknown;
}

interface Operation {
  script: OperationScript;
  polls: number;
  status: 'InProgress' | 'Succeeded' | 'Failed';
  onSucceed: () => void;
  onFail: () => void;
}

interface InjectedFailure {
  method: string;
  path: RegExp;
  status: number;
  code: string;
  message: string;
  times: number;
}

export class FakeArm {
  readonly servers = new Map<string, FakeServer>();
  readonly backups = new Map<string, FakeBackup[]>();
  readonly requests: RecordedRequest[] = [];
  restoreScript: RestoreScript = { pollsUntilDone: 1, outcome: 'succeed' };
  deleteScript: OperationScript = { pollsUntilDone: 1, outcome: 'succeed' };
  updateScript: OperationScript = { pollsUntilDone: 0, outcome: 'succeed' };
  private readonly operations = new Map<string, Operation>();
  private readonly failures: InjectedFailure[] = [];

  private constructor(
    private readonly server: HttpsServer,
    private readonly removeFolder: () => Promise<void>,
    readonly endpoint: string,
    readonly ca: string,
    private readonly token: string,
  ) {}

  static async start(options: { token: string }): Promise<FakeArm> {
    const { dir, remove } = await tempDir('fake-arm');
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ]);
    const [keyPem, certPem] = await Promise.all([readFile(key, 'utf8'), readFile(cert, 'utf8')]);
    let fake: FakeArm | undefined;
    const server = createServer({ key: keyPem, cert: certPem }, (req, res) => {
      fake!.handle(req, res).catch((e) => send(res, 500, { error: { code: 'InternalServerError', message: String(e) } }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    fake = new FakeArm(server, remove, `https://127.0.0.1:${port}`, certPem, options.token);
    return fake;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.removeFolder();
  }

  static id(s: Pick<FakeServer, 'subscriptionId' | 'resourceGroup' | 'name'>): string {
    return `/subscriptions/${s.subscriptionId}/resourceGroups/${s.resourceGroup}/providers/${PROVIDER}/flexibleServers/${s.name}`;
  }

  addServer(init: Partial<FakeServer> & Pick<FakeServer, 'subscriptionId' | 'resourceGroup' | 'name'>): FakeServer {
    const s: FakeServer = {
      location: 'westeurope',
      state: 'Ready',
      tags: {},
      backupRetentionDays: 7,
      geoRedundantBackup: 'Disabled',
      earliestRestoreDate: new Date(Date.now() - 7 * 86_400_000),
      createdAt: new Date(Date.now() - 30 * 86_400_000),
      fullyQualifiedDomainName: `${init.name}.postgres.database.azure.com`,
      ...init,
    };
    this.servers.set(FakeArm.id(s).toLowerCase(), s);
    return s;
  }

  addBackup(server: FakeServer, backup: FakeBackup): void {
    const key = FakeArm.id(server).toLowerCase();
    this.backups.set(key, [...(this.backups.get(key) ?? []), backup]);
  }

  find(resourceGroup: string, name: string): FakeServer | undefined {
    return [...this.servers.values()].find((s) => s.resourceGroup.toLowerCase() === resourceGroup.toLowerCase() && s.name === name);
  }

  /** The next `times` requests matching method and path are answered with this ARM error. */
  injectFailure(f: Omit<InjectedFailure, 'times'> & { times?: number }): void {
    this.failures.push({ ...f, times: f.times ?? 1 });
  }

  requestsOf(method: string, path?: RegExp): RecordedRequest[] {
    return this.requests.filter((r) => r.method === method && (!path || path.test(r.path)));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.endpoint);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const body = text ? JSON.parse(text) : undefined;
    const method = req.method ?? 'GET';
    this.requests.push({ method, path: url.pathname, body });

    if (req.headers.authorization !== `Bearer ${this.token}`) {
      return send(res, 401, {
        error: {
          code: 'AuthenticationFailed',
          message: 'Authentication failed. The Authorization header is missing or the token is invalid.',
        },
      });
    }
    if (url.searchParams.get('api-version') !== FAKE_ARM_API_VERSION) {
      return send(res, 400, {
        error: { code: 'InvalidApiVersionParameter', message: `The api-version '${url.searchParams.get('api-version')}' is invalid.` },
      });
    }
    const injected = this.failures.find((f) => f.times > 0 && f.method === method && f.path.test(url.pathname));
    if (injected) {
      injected.times--;
      return send(res, injected.status, { error: { code: injected.code, message: injected.message } });
    }

    const p = url.pathname;
    let m = new RegExp(
      `^/subscriptions/([^/]+)/providers/${PROVIDER}/locations/([^/]+)/(azureAsyncOperation|operationResults)/([^/]+)$`,
      'i',
    ).exec(p);
    if (m && method === 'GET') return this.operationStatus(res, m[3]!.toLowerCase() === 'operationresults', m[4]!);
    m = new RegExp(`^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/${PROVIDER}/flexibleServers$`, 'i').exec(p);
    if (m && method === 'GET') {
      const value = [...this.servers.values()]
        .filter((s) => s.subscriptionId === m![1] && s.resourceGroup.toLowerCase() === m![2]!.toLowerCase())
        .map((s) => this.json(s));
      return send(res, 200, { value });
    }
    m = new RegExp(`^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/${PROVIDER}/flexibleServers/([^/]+)/backups$`, 'i').exec(p);
    if (m && method === 'GET') {
      const s = this.lookup(m[1]!, m[2]!, m[3]!);
      if (!s) return notFound(res, m[3]!);
      const value = (this.backups.get(FakeArm.id(s).toLowerCase()) ?? []).map((b) => ({
        id: `${FakeArm.id(s)}/backups/${b.name}`,
        name: b.name,
        type: `${PROVIDER}/flexibleServers/backups`,
        properties: {
          backupType: b.backupType,
          completedTime: b.completedTime.toISOString(),
          source: b.backupType === 'Full' ? 'Automatic' : 'Customer',
        },
      }));
      return send(res, 200, { value });
    }
    m = new RegExp(`^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/${PROVIDER}/flexibleServers/([^/]+)$`, 'i').exec(p);
    if (m) {
      const [, sub, rg, name] = m as unknown as [string, string, string, string];
      const s = this.lookup(sub, rg, name);
      switch (method) {
        case 'GET':
          return s ? send(res, 200, this.json(s)) : notFound(res, name);
        case 'PUT':
          return this.createRestore(res, sub, rg, name, body);
        case 'PATCH':
          if (!s) return notFound(res, name);
          return this.accept(
            res,
            s,
            202,
            undefined,
            this.updateScript,
            () => {
              const days = (body as { properties?: { backup?: { backupRetentionDays?: number } } })?.properties?.backup
                ?.backupRetentionDays;
              if (days !== undefined) s.backupRetentionDays = days;
            },
            () => {},
          );
        case 'DELETE': {
          if (!s) return send(res, 204, undefined);
          s.state = 'Dropping';
          return this.accept(
            res,
            s,
            202,
            undefined,
            this.deleteScript,
            () => this.servers.delete(FakeArm.id(s).toLowerCase()),
            () => {
              s.state = 'Ready';
            },
          );
        }
      }
    }
    return send(res, 404, { error: { code: 'InvalidResourceType', message: `No route for ${method} ${p}` } });
  }

  private lookup(sub: string, rg: string, name: string): FakeServer | undefined {
    return this.servers.get(FakeArm.id({ subscriptionId: sub, resourceGroup: rg, name }).toLowerCase());
  }

  private createRestore(res: ServerResponse, sub: string, rg: string, name: string, body: unknown): void {
    const b = body as
      | {
          location?: string;
          tags?: Record<string, string>;
          properties?: { createMode?: string; sourceServerResourceId?: string; pointInTimeUTC?: string };
        }
      | undefined;
    const bad = (message: string) => send(res, 400, { error: { code: 'InvalidParameterValue', message } });
    if (!NAME_RE.test(name))
      return bad(
        `The server name '${name}' is invalid: 3-63 lower-case letters, digits and hyphens, not starting or ending with a hyphen.`,
      );
    if (this.lookup(sub, rg, name))
      return send(res, 409, { error: { code: 'ServerAlreadyExists', message: `Server '${name}' already exists.` } });
    if (b?.properties?.createMode !== 'PointInTimeRestore')
      return bad(`This fake only restores (createMode PointInTimeRestore), got ${b?.properties?.createMode}.`);
    const source = [...this.servers.values()].find(
      (s) => FakeArm.id(s).toLowerCase() === b.properties?.sourceServerResourceId?.toLowerCase(),
    );
    if (!source)
      return send(res, 404, {
        error: { code: 'SourceServerNotFound', message: `Source server '${b.properties.sourceServerResourceId}' was not found.` },
      });
    const point = new Date(b.properties.pointInTimeUTC ?? 'invalid');
    if (
      Number.isNaN(point.getTime()) ||
      !source.earliestRestoreDate ||
      point < source.earliestRestoreDate ||
      point.getTime() > Date.now() + 60_000
    ) {
      return send(res, 400, {
        error: {
          code: 'InvalidRestorePointInTime',
          message: `The restore point '${b.properties.pointInTimeUTC}' is outside the restore window of '${source.name}' (${source.earliestRestoreDate?.toISOString()} to now).`,
        },
      });
    }
    if (b.location?.toLowerCase().replace(/\s/g, '') !== source.location.toLowerCase().replace(/\s/g, '')) {
      return bad(`A point-in-time restore must be in the source's region '${source.location}', not '${b.location}'.`);
    }
    const s = this.addServer({
      subscriptionId: sub,
      resourceGroup: rg,
      name,
      location: source.location,
      state: 'Provisioning',
      tags: b.tags ?? {},
      backupRetentionDays: source.backupRetentionDays,
      geoRedundantBackup: source.geoRedundantBackup,
      earliestRestoreDate: undefined,
      createdAt: new Date(),
      fullyQualifiedDomainName: undefined,
      createMode: 'PointInTimeRestore',
      sourceServerResourceId: b.properties.sourceServerResourceId,
      pointInTimeUTC: point.toISOString(),
    });
    const script = this.restoreScript;
    this.accept(
      res,
      s,
      201,
      this.json(s),
      script,
      () => {
        s.state = 'Ready';
        s.earliestRestoreDate = new Date();
        s.fullyQualifiedDomainName = script.fqdn ?? '127.0.0.1';
      },
      () => {
        if (script.keepServerOnFailure ?? true) s.state = 'Disabled';
        else this.servers.delete(FakeArm.id(s).toLowerCase());
      },
    );
  }

  private accept(
    res: ServerResponse,
    s: FakeServer,
    status: number,
    body: unknown,
    script: OperationScript,
    onSucceed: () => void,
    onFail: () => void,
  ): void {
    const id = randomBytes(8).toString('hex');
    this.operations.set(id, { script: { ...script }, polls: 0, status: 'InProgress', onSucceed, onFail });
    const base = `${this.endpoint}/subscriptions/${s.subscriptionId}/providers/${PROVIDER}/locations/${s.location}`;
    send(res, status, body, {
      'Azure-AsyncOperation': `${base}/azureAsyncOperation/${id}?api-version=${FAKE_ARM_API_VERSION}`,
      Location: `${base}/operationResults/${id}?api-version=${FAKE_ARM_API_VERSION}`,
    });
  }

  private operationStatus(res: ServerResponse, resultStyle: boolean, id: string): void {
    const op = this.operations.get(id);
    if (!op) return send(res, 404, { error: { code: 'OperationNotFound', message: `Operation ${id} not found.` } });
    if (op.status === 'InProgress' && op.script.outcome !== 'never') {
      if (op.polls >= op.script.pollsUntilDone) {
        if (op.script.outcome === 'succeed') {
          op.status = 'Succeeded';
          op.onSucceed();
        } else {
          op.status = 'Failed';
          op.onFail();
        }
      }
      op.polls++;
    }
    if (resultStyle) return op.status === 'InProgress' ? send(res, 202, undefined) : send(res, 200, undefined);
    const error =
      op.status === 'Failed' ? { error: op.script.error ?? { code: 'InternalServerError', message: 'The operation failed.' } } : {};
    send(res, 200, { name: id, status: op.status, startTime: new Date().toISOString(), ...error });
  }

  private json(s: FakeServer): unknown {
    return {
      id: FakeArm.id(s),
      name: s.name,
      type: `${PROVIDER}/flexibleServers`,
      location: s.location,
      tags: s.tags,
      ...(s.createdAt ? { systemData: { createdAt: s.createdAt.toISOString(), createdBy: 'fake', createdByType: 'Application' } } : {}),
      sku: { name: 'Standard_B1ms', tier: 'Burstable' },
      properties: {
        state: s.state,
        version: '16',
        fullyQualifiedDomainName: s.fullyQualifiedDomainName,
        administratorLogin: 'tcabadmin',
        storage: { storageSizeGB: 32 },
        backup: {
          backupRetentionDays: s.backupRetentionDays,
          geoRedundantBackup: s.geoRedundantBackup,
          earliestRestoreDate: s.earliestRestoreDate?.toISOString(),
        },
        ...(s.createMode
          ? { createMode: s.createMode, sourceServerResourceId: s.sourceServerResourceId, pointInTimeUTC: s.pointInTimeUTC }
          : {}),
      },
    };
  }
}

function notFound(res: ServerResponse, name: string): void {
  send(res, 404, {
    error: { code: 'ResourceNotFound', message: `The Resource '${PROVIDER}/flexibleServers/${name}' under resource group was not found.` },
  });
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'x-ms-request-id': randomBytes(8).toString('hex'),
    ...headers,
  });
  res.end(text);
}
