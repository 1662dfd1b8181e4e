/**
 * The kinds of metric the catalogue (metrics.ts) is made of, each read at scrape time through a
 * callback over plain counters (Lodestar's addCollect style): the packet path never calls
 * prom-client.
 */
import { Counter, Gauge, type Metric, type Registry } from "prom-client";

export type Labels = Record<string, string>;

export function counter(reg: Registry, name: string, help: string, read: () => number): void {
  new Counter({
    name,
    help,
    registers: [reg],
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

export function gauge(reg: Registry, name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers: [reg],
    collect() {
      this.set(read());
    },
  });
}

export function labelledCounter(
  reg: Registry,
  name: string,
  help: string,
  labelNames: string[],
  read: () => [Labels, number][],
): void {
  new Counter({
    name,
    help,
    labelNames,
    registers: [reg],
    collect() {
      this.reset();
      for (const [l, v] of read()) this.inc(l, v);
    },
  });
}

export function labelledGauge(
  reg: Registry,
  name: string,
  help: string,
  labelNames: string[],
  read: () => [Labels, number][],
): void {
  new Gauge({
    name,
    help,
    labelNames,
    registers: [reg],
    collect() {
      // reset() drops label sets that are gone (a host that left the table).
      this.reset();
      for (const [l, v] of read()) this.set(l, v);
    },
  });
}

export interface Sample {
  value: number;
  labels: Labels;
  metricName?: string;
}

/**
 * A metric whose whole exposition is computed by `read` (prom-client's Histogram cannot be set
 * from counts kept elsewhere). Registry only calls name/type/get()/aggregator on a metric.
 */
export function rawMetric(
  reg: Registry,
  name: string,
  help: string,
  type: "histogram" | "summary" | "gauge",
  read: () => Sample[],
): void {
  const m = {
    name,
    help,
    type,
    aggregator: "sum",
    async get() {
      return { name, help, type, aggregator: "sum", values: read() };
    },
    reset() {},
  };
  reg.registerMetric(m as unknown as Metric);
}
