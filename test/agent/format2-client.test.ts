/**
 * What the client refuses in a chunk-data or chunk-list answer: an agent (or anything between it and the
 * functions) that frames records wrongly, sends more or fewer than asked, or cuts the answer. A real agent
 * never answers like this, so a small HTTP server plays the broken one; the client side is the real client.
 */
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient, AgentError } from '../../src/agent/client.js';
import { compressChunk } from '../../src/format/chunk-codec.js';
import { zstdFrameBound } from '../../src/format/params.js';
import { KEY, KEY_ID, sha256 } from './helpers.js';

const ID = '20261203T081500Z-0badc0de';
const plainA = Buffer.from('a'.repeat(20_000));
const plainB = Buffer.from('b'.repeat(30_000));
const A = sha256(plainA);
const B = sha256(plainB);
let frameA: Buffer;
let frameB: Buffer;
/** What the broken agent answers next. */
let answer: (res: ServerResponse) => void;
let server: Server;
let client: AgentClient;

beforeAll(async () => {
  frameA = await compressChunk(plainA);
  frameB = await compressChunk(plainB);
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => answer(res));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  client = new AgentClient({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, keyId: KEY_ID, key: KEY });
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

function record(sha: string, frame: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${sha} ${frame.length}\n`), frame]);
}

function sends(...parts: Buffer[]): void {
  answer = (res) => {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
    res.end(Buffer.concat(parts));
  };
}

async function readAll(hashes: string[]): Promise<{ frames: Buffer[]; error: unknown }> {
  const frames: Buffer[] = [];
  try {
    for await (const r of client.chunkData(ID, hashes)) frames.push(r.frame);
    return { frames, error: undefined };
  } catch (error) {
    return { frames, error };
  }
}

function expectRefused(error: unknown, text: string): void {
  expect(error).toBeInstanceOf(AgentError);
  const message = (error as AgentError).message;
  expect(message).toContain('127.0.0.1:');
  expect(message).toContain(ID);
  expect(message).toContain(text);
}

describe('AgentClient.chunkData checks the framing of the answer', () => {
  it('accepts well-framed records, split anywhere, in the order asked', async () => {
    const body = Buffer.concat([record(A, frameA), record(B, frameB), record(A, frameA)]);
    answer = (res) => {
      res.writeHead(200);
      // Seven-byte writes: headers and frames straddle the reads.
      let at = 0;
      const next = () => {
        if (at >= body.length) return void res.end();
        res.write(body.subarray(at, at + 7));
        at += 7;
        setImmediate(next);
      };
      next();
    };
    const { frames, error } = await readAll([A, B, A]);
    expect(error).toBeUndefined();
    expect(frames).toEqual([frameA, frameB, frameA]);
  });

  it('refuses a malformed header', async () => {
    sends(Buffer.from(`${A} twelve\n`), frameA);
    expectRefused((await readAll([A])).error, 'record 1 has a malformed header');
  });

  it('refuses a header that never ends', async () => {
    sends(Buffer.from('x'.repeat(500)));
    expectRefused((await readAll([A])).error, 'record 1 has no header line');
  });

  it("refuses a length over a zstd frame's bound for the largest chunk, before reading it", async () => {
    const bound = zstdFrameBound(256 * 1024);
    sends(Buffer.from(`${A} ${bound + 1}\n`));
    expectRefused((await readAll([A])).error, `over the ${bound}`);
  });

  it('refuses a record for another chunk than the one asked for there', async () => {
    sends(record(B, frameB));
    expectRefused((await readAll([A])).error, `record 1 is chunk ${B}, but ${A} was asked for there`);
  });

  it('refuses bytes that are not a zstd frame', async () => {
    sends(record(A, Buffer.from('not a frame at all')));
    expectRefused((await readAll([A])).error, 'is not a zstd frame');
  });

  it('refuses more records than asked for', async () => {
    sends(record(A, frameA), record(B, frameB));
    const { frames, error } = await readAll([A]);
    expect(frames).toHaveLength(1);
    expectRefused(error, 'holds more than the 1 records asked for');
  });

  it('refuses an answer that ends early, after the records it had', async () => {
    sends(record(A, frameA), Buffer.from(`${B} ${frameB.length}\n`), frameB.subarray(0, frameB.length - 3));
    const { frames, error } = await readAll([A, B]);
    expect(frames).toEqual([frameA]);
    expectRefused(error, 'was cut off after 1 of 2 chunks');
  });

  it('fails, naming the agent and snapshot, when the connection is cut mid-frame', async () => {
    answer = (res) => {
      res.writeHead(200);
      res.write(record(A, frameA));
      res.write(Buffer.from(`${B} ${frameB.length}\n`));
      res.write(frameB.subarray(0, 5), () => setTimeout(() => res.destroy(), 20));
    };
    const { frames, error } = await readAll([A, B]);
    expect(frames).toEqual([frameA]);
    expectRefused(error, 'chunk-data');
  });

  it('refuses a request over 1 MiB of hashes before sending it', async () => {
    const many = Array.from({ length: 17_000 }, (_, i) => sha256(Buffer.from(String(i))));
    const { error } = await readAll(many);
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).message).toContain('over the agent');
    expect((error as AgentError).permanent).toBe(true);
  });
});

describe('AgentClient.chunkList checks the list against its ETag and length', () => {
  const line = `${A} ${plainA.length}\n${B} ${plainB.length}\n`;

  it('yields entries with running offsets', async () => {
    answer = (res) => {
      res.writeHead(200, { 'Content-Length': line.length, ETag: `"${sha256(Buffer.from(line))}"` });
      res.end(line);
    };
    const entries = [];
    for await (const e of client.chunkList(ID)) entries.push(e);
    expect(entries).toEqual([
      { sha256: A, length: plainA.length, offset: 0 },
      { sha256: B, length: plainB.length, offset: plainA.length },
    ]);
  });

  it('refuses a list whose sha256 is not its ETag', async () => {
    answer = (res) => {
      res.writeHead(200, { 'Content-Length': line.length, ETag: `"${'0'.repeat(64)}"` });
      res.end(line);
    };
    const err = await (async () => {
      for await (const _ of client.chunkList(ID));
    })().catch((e: unknown) => e);
    expectRefused(err, 'not the 0000');
  });

  it('refuses a malformed line', async () => {
    const bad = `${A} -5\n`;
    answer = (res) => {
      res.writeHead(200, { 'Content-Length': bad.length, ETag: `"${sha256(Buffer.from(bad))}"` });
      res.end(bad);
    };
    const err = await (async () => {
      for await (const _ of client.chunkList(ID));
    })().catch((e: unknown) => e);
    expectRefused(err, 'malformed line 1');
  });
});
