/**
 * Log priorities for journald: under systemd every line starts with its syslog priority, so
 * `journalctl -p warning` shows warnings and not info (the nspawn boot test,
 * test/artefacts/systemd-boot.sh, checks that end to end); elsewhere lines stay plain JSON.
 */
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import t from "tap";
import { createLogger, isJournalStream, syslogPriority } from "../../../src/control/log.js";

function capture(journal: boolean) {
  const out = new PassThrough();
  const lines: string[] = [];
  out.setEncoding("utf8");
  out.on("data", (d: string) => lines.push(...d.split("\n").filter((l) => l !== "")));
  const log = createLogger({ level: "debug", destination: out, journal });
  return { log, lines };
}

t.test("for the journal each line carries its syslog priority, then the JSON", async (t) => {
  const { log, lines } = capture(true);
  log.debug("d");
  log.info({ a: 1 }, "i");
  log.warn("w");
  log.error("e");
  log.fatal("f");
  await new Promise((r) => setImmediate(r));
  t.same(
    lines.map((l) => l.slice(0, 3)),
    ["<7>", "<6>", "<4>", "<3>", "<2>"],
  );
  const info = JSON.parse(lines[1]?.slice(3) ?? "");
  t.equal(info.msg, "i", "the rest of the line is the JSON record");
  t.equal(info.a, 1);
});

t.test("without the journal the lines are plain JSON", async (t) => {
  const { log, lines } = capture(false);
  log.warn("w");
  await new Promise((r) => setImmediate(r));
  t.equal(lines.length, 1);
  t.equal(JSON.parse(lines[0] ?? "").msg, "w");
});

t.test("pino levels map to RFC 5424 severities", async (t) => {
  t.same([10, 20, 30, 40, 50, 60].map(syslogPriority), [7, 7, 6, 4, 3, 2]);
});

t.test(
  "JOURNAL_STREAM counts only when it names the descriptor's own device and inode",
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "tunnat-log-"));
    const fd = openSync(join(dir, "out"), "w");
    const other = openSync(join(dir, "other"), "w");
    t.teardown(() => {
      closeSync(fd);
      closeSync(other);
      rmSync(dir, { recursive: true, force: true });
    });
    const st = fstatSync(fd, { bigint: true });
    const env = { JOURNAL_STREAM: `${st.dev}:${st.ino}` };
    t.equal(isJournalStream(env, fd), true);
    t.equal(isJournalStream(env, other), false, "inherited by a redirected child: not the journal");
    t.equal(isJournalStream({}, fd), false);
    t.equal(isJournalStream({ JOURNAL_STREAM: "garbage" }, fd), false);
  },
);
