import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import { hasCapNetAdmin } from "../../../src/control/checks.js";
import { BatchClock } from "../../../src/control/clock.js";
import { startHttpServer } from "../../../src/control/http.js";

t.test("/healthz answers 503 before the data path is up and 200 after", async (t) => {
  const h = await startHttpServer({ host: "127.0.0.1", port: 0 });
  t.teardown(() => h.close());
  const url = `http://127.0.0.1:${h.address.port}`;
  t.equal((await fetch(`${url}/healthz`)).status, 503);
  h.setReady(true);
  const r = await fetch(`${url}/healthz`);
  t.equal(r.status, 200);
  t.equal(await r.text(), "ok\n");
  t.equal((await fetch(`${url}/nope`)).status, 404);
});

t.test("/metrics answers 503 until a provider is set, then from the provider", async (t) => {
  const h = await startHttpServer({ host: "127.0.0.1", port: 0 });
  t.teardown(() => h.close());
  t.equal((await fetch(`http://127.0.0.1:${h.address.port}/metrics`)).status, 503);
  h.setMetrics({
    contentType: "text/plain; version=0.0.4",
    metrics: async () => "tunnat_up 1\n",
  });
  const r = await fetch(`http://127.0.0.1:${h.address.port}/metrics`);
  t.equal(r.status, 200);
  t.equal(await r.text(), "tunnat_up 1\n");
});

t.test("a taken port is a TUNNAT_ERR_CONTROL naming the address", async (t) => {
  const h = await startHttpServer({ host: "127.0.0.1", port: 0 });
  t.teardown(() => h.close());
  await t.rejects(startHttpServer({ host: "127.0.0.1", port: h.address.port }), {
    code: "TUNNAT_ERR_CONTROL",
    message: new RegExp(`127\\.0\\.0\\.1:${h.address.port}.*EADDRINUSE`),
  });
});

t.test("the batch clock holds one reading until refreshed", async (t) => {
  const src = new ManualClock(5000);
  const c = new BatchClock(src);
  src.advance(100);
  t.equal(c.now(), 5000);
  c.refresh();
  t.equal(c.now(), 5100);
});

t.test("CAP_NET_ADMIN is read from bit 12 of CapEff", async (t) => {
  t.equal(hasCapNetAdmin("Name:\tnode\nCapEff:\t0000000000001000\n"), true);
  t.equal(hasCapNetAdmin("CapEff:\t0000000000000fff\n"), false);
  t.equal(hasCapNetAdmin("CapEff:\t000001fffeffffff\n"), true);
  t.equal(hasCapNetAdmin("nothing"), false);
});
