/**
 * The HTTP listener on the metrics address: GET /healthz (200 once the daemon is up, 503 before
 * and while stopping), GET /readyz (as /healthz, and also 503 naming what forwarding needs and
 * lacks: see readiness.ts) and GET /metrics from the MetricsProvider the daemon hands it with
 * setMetrics() once the data path is up (503 before). The listener starts first so that a taken
 * port fails before anything is touched. Scrapes read counters; they never touch the data path.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { ErrorCode, TunnatError } from "../base/errors.js";
import type { HostPort } from "./config.js";

interface MetricsProvider {
  contentType: string;
  metrics(): Promise<string>;
}

export interface HttpServer {
  readonly server: Server;
  /** The bound address (port resolved when 0 was asked for). */
  readonly address: HostPort;
  setReady(ready: boolean): void;
  /**
   * /readyz also asks `check` (null = forwarding, else the reason), so a stuck data path turns
   * it 503 while /healthz (the process is up and not stopping) stays 200.
   */
  setReadinessCheck(check: () => string | null): void;
  /** Serve /metrics from `p` (undefined: 503 again). */
  setMetrics(p: MetricsProvider | undefined): void;
  close(): Promise<void>;
}

export async function startHttpServer(listen: HostPort): Promise<HttpServer> {
  let ready = false;
  let check: () => string | null = () => null;
  let provider: MetricsProvider | undefined;
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/healthz") {
      res.writeHead(ready ? 200 : 503, { "content-type": "text/plain; charset=utf-8" });
      res.end(ready ? "ok\n" : "starting\n");
      return;
    }
    if (path === "/readyz") {
      const why = ready ? check() : "starting";
      res.writeHead(why === null ? 200 : 503, { "content-type": "text/plain; charset=utf-8" });
      res.end(why === null ? "ok\n" : `${why}\n`);
      return;
    }
    if (path === "/metrics") {
      const p = provider;
      if (!p) {
        res.writeHead(503, { "content-type": "text/plain; charset=utf-8" }).end("starting\n");
        return;
      }
      p.metrics().then(
        (body) => {
          res.writeHead(200, { "content-type": p.contentType }).end(body);
        },
        (e: unknown) => {
          res
            .writeHead(500, { "content-type": "text/plain" })
            .end(`metrics failed: ${String(e)}\n`);
        },
      );
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
  };
  const server = createServer(handle);
  // Keep-alive sockets from scrapers must not hold shutdown past its 2 s budget.
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) =>
      reject(
        new TunnatError(
          ErrorCode.Control,
          `cannot listen on ${listen.host}:${listen.port} for /metrics and /healthz: ${e.code ?? e.message}; choose another --metrics HOST:PORT`,
        ),
      );
    server.once("error", onError);
    server.listen(listen.port, listen.host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const addr = server.address();
  const bound =
    addr && typeof addr === "object" ? { host: addr.address, port: addr.port } : { ...listen };
  return {
    server,
    address: bound,
    setReady(r: boolean) {
      ready = r;
    },
    setReadinessCheck(c: () => string | null) {
      check = c;
    },
    setMetrics(p: MetricsProvider | undefined) {
      provider = p;
    },
    close() {
      ready = false;
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
