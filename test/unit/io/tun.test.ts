import t from "tap";
import { ErrorCode } from "../../../src/base/errors.js";
import {
  classifyErrno,
  EAGAIN,
  EBADF,
  EBADFD,
  EINTR,
  EINVAL,
  ENODEV,
  ENXIO,
  errnoError,
  isErrnoError,
} from "../../../src/io/errno.js";
import { addonPath, loadAddon, openTun, SLOT_SIZE } from "../../../src/io/tun.js";

t.test("errno is classified once: retry, device gone, or fatal", (t) => {
  t.equal(classifyErrno(EAGAIN), "retry");
  t.equal(classifyErrno(EINTR), "retry");
  for (const e of [EBADF, EBADFD, ENXIO, ENODEV]) t.equal(classifyErrno(e), "gone", `errno ${e}`);
  t.equal(classifyErrno(EINVAL), "fatal");
  t.equal(classifyErrno(1), "fatal", "EPERM");
  t.end();
});

t.test("an errno error carries the code name and the number", (t) => {
  const e = errnoError(13, "EACCES", "open", "cannot open /dev/net/tun");
  t.ok(isErrnoError(e));
  t.equal(e.code, "EACCES");
  t.equal(e.errno, 13);
  t.equal(e.syscall, "open");
  t.match(e.message, /EACCES/);
  t.notOk(isErrnoError(new Error("plain")));
  t.end();
});

t.test("a slot holds a 64 KiB GSO packet plus its virtio_net_hdr", (t) => {
  t.ok(SLOT_SIZE >= 65_535 + 10);
  t.equal(SLOT_SIZE % 64, 0);
  t.end();
});

t.test("offloads without a vnet header are refused before any device is opened", (t) => {
  t.throws(() => openTun({ name: "tnunit0", offloads: true }), {
    name: "TunnatError",
    code: ErrorCode.Config,
  });
  t.end();
});

t.test("a slot count out of range is refused", (t) => {
  for (const slots of [0, -1, 1.5, 100_000]) {
    t.throws(
      () => openTun({ name: "tnunit0", slots }),
      { name: "TunnatError", code: ErrorCode.Config },
      `slots ${slots}`,
    );
  }
  t.end();
});

t.test(
  "naming an errno libuv does not know allocates nothing that stays (uv_err_name leaked)",
  { skip: addonPath() === undefined ? "the native addon is not built" : false },
  (t) => {
    const a = loadAddon();
    t.match(a.errnoName(4000), /4000/);
    const round = () => {
      for (let i = 0; i < 400_000; i++) a.errnoName(4000 + (i % 1000));
    };
    round();
    global.gc?.();
    const before = process.memoryUsage().rss;
    for (let r = 0; r < 5; r++) round();
    global.gc?.();
    const grown = process.memoryUsage().rss - before;
    // uv_err_name() mallocs ~48 bytes per call for an unknown errno: 800,000 calls kept ~38 MB,
    // so these 2,000,000 would keep ~95 MB. The strings the calls return are garbage whose
    // share of RSS depends on the V8 version's heap sizing (up to ~24 MB seen on Node 24).
    t.ok(grown < 48 * 1024 * 1024, `RSS grew ${(grown / 1048576).toFixed(1)} MB`);
    t.end();
  },
);
