/**
 * Takeover on EC2, where no L2 failover exists: the new active points every private route table's
 * default route at its own ENI (ReplaceRoute) and moves the NAT address to itself: the Elastic IP
 * (AssociateAddress with AllowReassociation) or a secondary private IP (AssignPrivateIpAddresses
 * with AllowReassignment). Credentials come from the SDK's default chain, i.e. the instance role
 * through IMDSv2 on an instance; the policy these calls need is in docs/ha.md.
 *
 * Every call is retried with exponential backoff and full jitter when EC2 throttles
 * (RequestLimitExceeded and friends), fails on its side (5xx) or cannot be reached; any other
 * error (a wrong id, a missing permission) fails at once. The SDK's own retries are off
 * (maxAttempts 1) so that this is the one retry policy. A takeover that fails half-way (routes
 * replaced, the address not) rejects naming the steps that failed; the controller counts it and
 * calls active() again, which redoes only what is not done yet (each step is idempotent anyway).
 * The steps run at the same time (each with its own retries): the takeover lasts about one API
 * round trip however many route tables there are.
 */
import {
  AssignPrivateIpAddressesCommand,
  AssociateAddressCommand,
  DescribeRouteTablesCommand,
  EC2Client,
  ReplaceRouteCommand,
} from "@aws-sdk/client-ec2";
import type { Ec2Settings } from "./config.js";
import type { Takeover } from "./controller.js";

/** What the takeover needs of an EC2Client (aws-sdk-client-mock stands in for it in tests). */
export interface Ec2Api {
  // biome-ignore lint/suspicious/noExplicitAny: the SDK's send() is overloaded per command type
  send(command: any): Promise<any>;
}

export interface RetryOptions {
  attempts: number;
  baseMs: number;
  maxMs: number;
  sleep(ms: number): Promise<void>;
  random(): number;
}

export const DEFAULT_RETRY: RetryOptions = {
  attempts: 6,
  baseMs: 200,
  maxMs: 5000,
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
  random: Math.random,
};

const THROTTLED = new Set([
  "RequestLimitExceeded",
  "Throttling",
  "ThrottlingException",
  "RequestThrottled",
  "RequestThrottledException",
  "TooManyRequestsException",
  "InternalError",
  "InternalFailure",
  "ServiceUnavailable",
  "Unavailable",
  "TimeoutError",
  "RequestTimeout",
]);
const NETWORK = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/** Is this SDK error worth another try? */
export function retryable(e: unknown): boolean {
  if (typeof e !== "object" || e === null) return false;
  const o = e as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } };
  if (o.name !== undefined && THROTTLED.has(o.name)) return true;
  if (o.code !== undefined && NETWORK.has(o.code)) return true;
  const status = o.$metadata?.httpStatusCode;
  return status !== undefined && status >= 500;
}

class Ec2Stats {
  calls = 0;
  retries = 0;
  failures = 0;
}

export class Ec2Takeover implements Takeover {
  readonly name = "ec2";
  readonly stats = new Ec2Stats();
  /** Steps done in the current takeover (a retry skips them). */
  private done = new Set<string>();

  constructor(
    private readonly spec: Ec2Settings,
    private readonly api: Ec2Api,
    private readonly retry: RetryOptions = DEFAULT_RETRY,
  ) {}

  /** An EC2 client for the instance role (IMDSv2 through the SDK's default chain). */
  static client(spec: Ec2Settings): Ec2Api {
    return new EC2Client({ ...(spec.region ? { region: spec.region } : {}), maxAttempts: 1 });
  }

  // biome-ignore lint/suspicious/noExplicitAny: see Ec2Api
  private async call(what: string, command: any): Promise<any> {
    const r = this.retry;
    for (let attempt = 0; ; attempt++) {
      this.stats.calls++;
      try {
        return await this.api.send(command);
      } catch (e) {
        if (!retryable(e) || attempt + 1 >= r.attempts) {
          this.stats.failures++;
          const name = (e as { name?: string }).name ?? "Error";
          throw new Error(`${what}: ${name}: ${(e as Error).message ?? String(e)}`, { cause: e });
        }
        this.stats.retries++;
        const cap = Math.min(r.maxMs, r.baseMs * 2 ** attempt);
        await r.sleep(Math.floor(r.random() * cap));
      }
    }
  }

  async active(): Promise<void> {
    const s = this.spec;
    // Every step at once: they are independent, and one after another the takeover would last
    // one API round trip per route table more (test/bench/ec2-failover.ts measures both).
    // biome-ignore lint/suspicious/noExplicitAny: see Ec2Api
    const steps: [string, any][] = s.routeTables.map((rt) => [
      `ReplaceRoute ${rt}`,
      new ReplaceRouteCommand({
        RouteTableId: rt,
        DestinationCidrBlock: s.destination,
        NetworkInterfaceId: s.networkInterfaceId,
      }),
    ]);
    const addr = s.allocationId ?? s.secondaryPrivateIp;
    if (addr !== undefined)
      steps.push([
        s.allocationId ? `AssociateAddress ${addr}` : `AssignPrivateIpAddresses ${addr}`,
        s.allocationId
          ? new AssociateAddressCommand({
              AllocationId: s.allocationId,
              NetworkInterfaceId: s.networkInterfaceId,
              ...(s.privateIpAddress ? { PrivateIpAddress: s.privateIpAddress } : {}),
              AllowReassociation: true,
            })
          : new AssignPrivateIpAddressesCommand({
              NetworkInterfaceId: s.networkInterfaceId,
              PrivateIpAddresses: [addr],
              AllowReassignment: true,
            }),
      ]);
    const results = await Promise.allSettled(
      steps
        .filter(([step]) => !this.done.has(step))
        .map(async ([step, command]) => {
          await this.call(step, command);
          this.done.add(step);
        }),
    );
    const failed = results.flatMap((r) =>
      r.status === "rejected" ? [(r.reason as Error).message] : [],
    );
    if (failed.length > 0) throw new Error(`EC2 takeover incomplete: ${failed.join("; ")}`);
    // All done: the next takeover (after a demotion) starts over.
    this.done.clear();
  }

  async standby(): Promise<void> {
    // Nothing to let go: the peer's takeover moves the routes and the address away from us.
    this.done.clear();
  }

  /** Does every route table's route for the destination still target our ENI? */
  async owns(): Promise<boolean> {
    const s = this.spec;
    const out = await this.call(
      "DescribeRouteTables",
      new DescribeRouteTablesCommand({ RouteTableIds: s.routeTables }),
    );
    const tables = (out?.RouteTables ?? []) as {
      Routes?: { DestinationCidrBlock?: string; NetworkInterfaceId?: string }[];
    }[];
    if (tables.length === 0) return false;
    for (const t of tables) {
      const r = (t.Routes ?? []).find((x) => x.DestinationCidrBlock === s.destination);
      if (r?.NetworkInterfaceId !== s.networkInterfaceId) return false;
    }
    return true;
  }
}
