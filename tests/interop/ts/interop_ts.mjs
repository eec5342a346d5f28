// Interop program on the official TypeScript SDK (@resonatehq/sdk 0.11.5), for Node >= 20.
//
// Same subcommands, durable functions and output as ../py/interop_py.py:
//   worker | rpc | run | get | resolve | schedule-create | schedule-delete
// Results are printed as `INTEROP-RESULT <json>` lines on stdout; a worker prints
// `INTEROP-READY` once its SSE stream is open. Durable functions append lines to files in
// $INTEROP_RECORD_DIR (one file per workflow) so the test can count step executions.

// The SDK declares node >= 22; on node 20 it works once Promise.withResolvers exists. The
// polyfill must run before the SDK module is evaluated, hence the dynamic import below.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const { Resonate, Codec } = await import("@resonatehq/sdk");
const fs = await import("node:fs");
const path = await import("node:path");
const crypto = await import("node:crypto");
const { parseArgs } = await import("node:util");

const RESULT = "INTEROP-RESULT";
const READY = "INTEROP-READY";
const WORKER = { group: "", pid: "" };

// --- recording ---------------------------------------------------------------------------

function record(name, ...fields) {
  const file = path.join(process.env.INTEROP_RECORD_DIR, name);
  const fd = fs.openSync(file, "a");
  try {
    fs.writeSync(fd, fields.join(" ") + "\n");
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function emit(value) {
  process.stdout.write(`${RESULT} ${JSON.stringify(sortKeys(value))}\n`);
}

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, sortKeys(v[k])]),
    );
  }
  return v;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- leaf functions (run through ctx.run / ctx.beginRun) ---------------------------------

function addStep(ctx, acc, i) {
  record(ctx.originId, "done", i, process.pid);
  return acc + i;
}

function nowMs(_ctx) {
  return Date.now();
}

async function square(ctx, i, ms) {
  record(ctx.originId, "start", i, process.pid);
  await sleep(ms);
  record(ctx.originId, "done", i, process.pid);
  return i * i;
}

function publish(ctx, promiseId) {
  record(`${ctx.originId}.promise`, promiseId);
  return promiseId;
}

async function slowStep(ctx, i, ms) {
  record(ctx.originId, "start", i, process.pid);
  await sleep(ms);
  record(ctx.originId, "done", i, process.pid);
  return i;
}

// --- durable functions (registered by name) ----------------------------------------------

function* steps(ctx, n) {
  let acc = 0;
  const out = [];
  for (let i = 1; i <= n; i++) {
    acc = yield* ctx.run(addStep, acc, i);
    out.push(acc);
  }
  return out;
}

function* sleeper(ctx, ms) {
  const t0 = yield* ctx.run(nowMs);
  yield* ctx.sleep(ms);
  const t1 = yield* ctx.run(nowMs);
  return { slept_ms: t1 - t0 };
}

function* fanout(ctx, n, ms) {
  const futures = [];
  for (let i = 0; i < n; i++) futures.push(yield* ctx.beginRun(square, i, ms));
  const out = [];
  for (const f of futures) out.push(yield* f);
  return out;
}

function* caller(ctx, x, group) {
  const remote = yield* ctx.rpc("remote_add", x, 1, ctx.options({ target: group }));
  return { caller_group: WORKER.group, remote };
}

function remote_add(ctx, a, b) {
  record(ctx.originId, "remote_add", a, b, WORKER.group, process.pid);
  return { sum: a + b, group: WORKER.group };
}

function* approval(ctx) {
  const p = yield* ctx.promise({ timeout: 5 * 60 * 1000 });
  yield* ctx.run(publish, p.id);
  const value = yield* p;
  return { approved: value };
}

async function once(ctx, ms) {
  record(ctx.originId, "exec", process.pid);
  await sleep(ms);
  return { token: crypto.randomUUID().replace(/-/g, ""), pid: process.pid };
}

function tick(ctx, tag) {
  record(`tick-${tag}`, ctx.id, process.pid);
  return `tick ${ctx.id}`;
}

function* crashy(ctx, n, ms) {
  let total = 0;
  for (let i = 0; i < n; i++) total += yield* ctx.run(slowStep, i, ms);
  return total;
}

function* napper(ctx, ms, stepMs) {
  let total = yield* ctx.run(slowStep, 0, 1);
  yield* ctx.sleep(ms);
  total += yield* ctx.run(slowStep, 1, stepMs);
  total += yield* ctx.run(slowStep, 2, 1);
  return total;
}

const FUNCTIONS = {
  main: { steps, sleeper, fanout, caller, approval, once, tick, crashy, napper },
  remote: { remote_add },
};

// --- wiring ------------------------------------------------------------------------------

function makeLogger(onReady) {
  const line = (level, fields, msg) =>
    process.stderr.write(`${new Date().toISOString()} ${level} ${msg} ${JSON.stringify(fields)}\n`);
  return {
    debug() {},
    info(fields, msg) {
      line("INFO", fields, msg);
      if (msg === "adapter connected" || msg === "adapter reconnected") onReady();
    },
    warn: (fields, msg) => line("WARN", fields, msg),
    error: (fields, msg) => line("ERROR", fields, msg),
  };
}

function make(opts, group, onReady = () => {}) {
  const r = new Resonate({
    url: opts.url,
    group,
    pid: opts.pid || crypto.randomUUID().replace(/-/g, ""),
    ttl: Number(opts["ttl-ms"]),
    logger: makeLogger(onReady),
  });
  for (const [name, fn] of Object.entries(FUNCTIONS[opts.role])) r.register(name, fn);
  return r;
}

const codec = new Codec();

// --- subcommands -------------------------------------------------------------------------

const COMMANDS = {
  async worker(opts) {
    WORKER.group = opts.group;
    WORKER.pid = opts.pid || crypto.randomUUID().replace(/-/g, "");
    opts.pid = WORKER.pid;
    const r = make(opts, opts.group, () => process.stdout.write(`${READY}\n`));
    console.log(`worker group=${opts.group} pid=${opts.pid} os_pid=${process.pid}`);
    await new Promise((resolve) => {
      process.on("SIGTERM", resolve);
      process.on("SIGINT", resolve);
    });
    await r.stop();
  },

  async rpc(opts, r) {
    const args = JSON.parse(opts.args);
    const handles = [];
    for (let i = 0; i < Number(opts.times); i++) {
      handles.push(await r.beginRpc(opts.id, opts.func, ...args, r.options({ target: opts.target })));
    }
    if (opts["no-wait"]) return emit({ id: opts.id });
    const out = [];
    for (const h of handles) out.push(await h.result());
    emit(out);
  },

  async run(opts, r) {
    const args = JSON.parse(opts.args);
    const handles = [];
    for (let i = 0; i < Number(opts.times); i++) {
      handles.push(await r.beginRun(opts.id, opts.func, ...args));
    }
    const out = [];
    for (const h of handles) out.push(await h.result());
    emit(out);
  },

  async get(opts, r) {
    const h = await r.get(opts.id);
    emit(await h.result());
  },

  async resolve(opts, r) {
    const rec = await r.promises.resolve(opts.id, {
      data: codec.encode(JSON.parse(opts.value)).data,
    });
    emit({ id: rec.id, state: rec.state, value: codec.decode(rec.value) });
  },

  async "schedule-create"(opts, r) {
    const args = JSON.parse(opts.args);
    await r.schedule(opts.id, opts.cron, opts.func, ...args, r.options({ target: opts.target }));
    const rec = await r.schedules.get(opts.id);
    emit({ id: rec.id, cron: rec.cron, promiseId: rec.promiseId });
  },

  async "schedule-delete"(opts, r) {
    await r.schedules.delete(opts.id);
    emit({ deleted: opts.id });
  },
};

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      url: { type: "string" },
      group: { type: "string", default: "clients" },
      pid: { type: "string", default: "" },
      "ttl-ms": { type: "string", default: "10000" },
      role: { type: "string", default: "main" },
      id: { type: "string", default: "" },
      func: { type: "string", default: "" },
      args: { type: "string", default: "[]" },
      target: { type: "string", default: "default" },
      times: { type: "string", default: "1" },
      "no-wait": { type: "boolean", default: false },
      value: { type: "string", default: "null" },
      cron: { type: "string", default: "" },
    },
  });
  // Exit when the test process that started us is gone (the SDK would retry forever).
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(3);
  }, 1000).unref();
  const command = positionals[0];
  if (!(command in COMMANDS) || !values.url) {
    console.error(`usage: interop_ts.mjs {${Object.keys(COMMANDS).join("|")}} --url URL ...`);
    process.exit(2);
  }
  if (command === "worker") {
    await COMMANDS.worker(values);
  } else {
    const r = make(values, values.group);
    await COMMANDS[command](values, r);
    await r.stop();
  }
  process.exit(0);
}

main().catch((err) => {
  console.error("interop_ts failed:", err && err.stack ? err.stack : err);
  process.exit(1);
});
