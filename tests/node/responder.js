// A NATS request-reply service for bgjob's request-reply handlers (tests/test_request_reply.py), written against
// the contract in README.md's "Request-reply handlers" section with the npm `nats` client.
//
//   node responder.js <nats url> <subject>
//
// What it answers depends on the job's arg (JSON), `{"do": ...}`:
//   "ok"      -> the job as it arrived (headers and arg), as JSON: the job's value
//   "text"    -> a plain-text body that is not JSON
//   "retry"   -> on attempt 1, Bgjob-Retry-After: <arg.after> with a 503 service error; later, like "ok"
//   "dlq"     -> Nats-Service-Error-Code 422: dead-letter the job
//   "bad"     -> Nats-Service-Error-Code 400: non-retryable
//   "fail"    -> Nats-Service-Error-Code 500: an ordinary (retried) failure
//   "silent"  -> no reply at all (the worker's request times out)
//   "hold"    -> prints "held <job id>", and replies like "ok" once a message arrives on <subject>.release
// It prints "ready" on stdout once its subscription is registered with the server.
"use strict";
const { connect, headers, StringCodec } = require("nats");

const sc = StringCodec();

// nats.js v2 ignores credentials in a URL (bgjob's development server's is nats://<token>@host:port).
function natsOptions(text) {
  const url = new URL(text);
  const options = { servers: `${url.protocol}//${url.host}`, name: "bgjob-test-responder" };
  const user = decodeURIComponent(url.username);
  const pass = decodeURIComponent(url.password);
  if (user && pass) Object.assign(options, { user, pass });
  else if (user) options.token = user;
  return options;
}

function serviceError(code, text) {
  const h = headers();
  h.set("Nats-Service-Error", text);
  h.set("Nats-Service-Error-Code", String(code));
  return h;
}

async function main() {
  const [url, subject] = process.argv.slice(2);
  const nc = await connect(natsOptions(url));
  const sub = nc.subscribe(subject);
  const held = [];
  nc.subscribe(`${subject}.release`, {
    callback: () => {
      for (const [m, job] of held.splice(0)) m.respond(sc.encode(JSON.stringify(job)));
    },
  });
  await nc.flush();
  process.stdout.write("ready\n");
  for await (const m of sub) {
    const h = m.headers;
    const get = (name) => (h ? h.get(name) : "");
    let arg = null;
    try {
      arg = JSON.parse(sc.decode(m.data));
    } catch (e) {
      arg = sc.decode(m.data);
    }
    const what = arg && typeof arg === "object" ? arg.do : undefined;
    const job = {
      id: get("Bgjob-Id"),
      type: get("Bgjob-Type"),
      queue: get("Bgjob-Queue"),
      attempt: Number(get("Bgjob-Attempt")),
      request_id: get("Bgjob-Request-Id"),
      deadline: get("Bgjob-Deadline"),
      content_type: get("Content-Type"),
      arg,
      by: "node",
    };
    if (what === "silent") continue;
    if (what === "hold") {
      held.push([m, job]);
      process.stdout.write(`held ${job.id}\n`);
      continue;
    }
    if (what === "text") {
      m.respond(sc.encode(`plain text for ${job.id}`));
    } else if (what === "retry" && job.attempt === 1) {
      const rh = serviceError(503, "busy, come back later");
      rh.set("Bgjob-Retry-After", String(arg.after ?? 0.1));
      m.respond(sc.encode(""), { headers: rh });
    } else if (what === "dlq") {
      m.respond(sc.encode(""), { headers: serviceError(422, `cannot process ${job.id}`) });
    } else if (what === "bad") {
      m.respond(sc.encode(""), { headers: serviceError(400, "no such customer") });
    } else if (what === "fail") {
      m.respond(sc.encode(""), { headers: serviceError(500, "database unavailable") });
    } else {
      m.respond(sc.encode(JSON.stringify(job)));
    }
  }
}

main().catch((err) => {
  process.stderr.write(`responder: ${err}\n`);
  process.exit(1);
});
