/**
 * TunnatNatProvider: an `ec2.NatProvider` that puts tunnat on one instance per availability
 * zone, for `new ec2.Vpc(this, "Vpc", { natGatewayProvider: new TunnatNatProvider({...}) })`.
 *
 * Per NAT subnet (a public subnet, one per AZ) it creates:
 *  - a network interface (ENI) of its own, source/destination check off, with one secondary
 *    private IP; an Elastic IP is associated with that secondary IP, which is tunnat's NAT
 *    address. The ENI is a CloudFormation resource, not the instance's primary ENI, so it and
 *    its Elastic IP outlive the instance: a replacement instance attaches the same ENI, and
 *    the private route tables (which point at the ENI) and the public address never change;
 *  - an auto-scaling group of exactly one instance (launch template: Amazon Linux 2023, IMDSv2
 *    only, an encrypted root volume, a public IP on the primary ENI for the host's own traffic:
 *    packages, the tunnat tarball). The group replaces a failed or terminated instance by
 *    itself; a plain `ec2.Instance` would stay dead until someone notices;
 *  - user data: the settings as variables, then deploy/cloud-init.sh, which attaches the ENI,
 *    installs Node.js and the tunnat release tarball (SHA-256 checked) and starts the service.
 * Shared by all AZs: one security group (everything from the VPC's CIDR; ICMP 3/4 from
 * anywhere, for path MTU discovery) and one instance role (SSM managed instance core, and
 * ec2:AttachNetworkInterface on this construct's ENIs and on instances carrying its tag only).
 * Private subnets get `0.0.0.0/0 -> ENI` of the NAT in their AZ (or round-robin where an AZ
 * has no NAT subnet).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Fn, Stack, Tags, Token, Validations } from "aws-cdk-lib";
import * as autoscaling from "aws-cdk-lib/aws-autoscaling";
import * as ec2 from "aws-cdk-lib/aws-ec2";
import * as iam from "aws-cdk-lib/aws-iam";

/** The tag that marks the ENIs and instances of one provider; the IAM condition checks it. */
export const TAG_KEY = "tunnat:nat";

/** deploy/cloud-init.sh, relative to this file compiled (deploy/cdk/dist/src). */
export const CLOUD_INIT_PATH = join(__dirname, "..", "..", "..", "cloud-init.sh");

/** EC2 takes at most 16 KiB of user data (before base64). */
export const USER_DATA_MAX = 16 * 1024;

export interface TunnatNatProviderProps {
  /**
   * URL of the tunnat release tarball (`npm pack` output, e.g. attached to a GitHub release
   * or in S3). Tokens (CloudFormation parameters) are fine.
   */
  readonly tarballUrl: string;
  /** SHA-256 of that tarball, 64 hex digits; the instance refuses a tarball that differs. */
  readonly tarballSha256: string;
  /** @default t4g.small (arm64) */
  readonly instanceType?: ec2.InstanceType;
  /** @default the latest Amazon Linux 2023 for the instance type's architecture (SSM parameter) */
  readonly machineImage?: ec2.IMachineImage;
  /** Node.js major version the instance installs. @default 24 */
  readonly nodeMajor?: number;
  /** tunnat's preset. @default "aws" (350 s idle timeout, RST, ports 1024-65535) */
  readonly preset?: "aws" | "default";
  /** Commands appended to the user data, after tunnat started. */
  readonly extraUserData?: string[];
  /** The user-data script. @default the contents of deploy/cloud-init.sh */
  readonly cloudInitScript?: string;
  /** Value of the `tunnat:nat` tag on the ENIs and instances. @default the VPC's node path */
  readonly tagValue?: string;
  /**
   * Acknowledge, with their reasons, the four cdk-nag AwsSolutions findings this construct
   * accepts on purpose (NAG_ACKNOWLEDGEMENTS). false leaves them to you.
   * @default true
   */
  readonly acknowledgeNagFindings?: boolean;
}

/** The cdk-nag AwsSolutions findings the construct accepts, and why (docs/ec2.md repeats them). */
export const NAG_REASONS = {
  "AwsSolutions-EC23":
    "The only 0.0.0.0/0 inbound rule is ICMP type 3 code 4 (fragmentation needed): path MTU discovery needs it from any router on the path; everything else comes from the VPC's CIDR only.",
  "AwsSolutions-IAM4":
    "AmazonSSMManagedInstanceCore is the AWS-maintained minimum for Session Manager, which replaces SSH on the NAT instances.",
  "AwsSolutions-IAM5":
    "ec2:AttachNetworkInterface needs the instance's ARN, which does not exist before the auto-scaling group launches it: the statement names this provider's ENIs by ARN, and an instance only when it carries this provider's tunnat:nat tag.",
  "AwsSolutions-AS3":
    "Scaling notifications need a topic of the operator's choosing; the group replaces a failed instance by EC2 health check whatever is notified.",
} as const;

/** One NAT: what the construct made in one NAT subnet. */
export interface TunnatNat {
  readonly availabilityZone: string;
  readonly networkInterface: ec2.CfnNetworkInterface;
  readonly elasticIp: ec2.CfnEIP;
  readonly autoScalingGroup: autoscaling.AutoScalingGroup;
}

const SHA256 = /^[0-9a-f]{64}$/;

export class TunnatNatProvider extends ec2.NatProvider {
  private readonly nats: TunnatNat[] = [];
  private readonly byAz = new Map<string, TunnatNat>();
  private next = 0;
  private sg?: ec2.SecurityGroup;
  private instanceRole?: iam.Role;

  constructor(private readonly props: TunnatNatProviderProps) {
    super();
    const sha = props.tarballSha256;
    if (!isToken(sha) && !SHA256.test(sha))
      throw new Error(
        `tarballSha256: expected 64 lower-case hex digits (sha256sum of the tarball), got "${sha}"`,
      );
    if (!isToken(props.tarballUrl) && !/^https:\/\/[^'\s]+$/.test(props.tarballUrl))
      throw new Error(
        `tarballUrl: expected an https:// URL without quotes or spaces, got "${props.tarballUrl}"`,
      );
  }

  /** Called by `ec2.Vpc`. */
  configureNat(options: ec2.ConfigureNatOptions): void {
    this.configureNatIn(options);
  }

  /** The same for an imported VPC and subnets (the CloudFormation template uses this). */
  configureNatIn(options: {
    readonly vpc: ec2.IVpc;
    readonly natSubnets: ec2.ISubnet[];
    readonly privateSubnets: ec2.ISubnet[];
  }): void {
    const { vpc, natSubnets, privateSubnets } = options;
    if (natSubnets.length === 0) throw new Error("TunnatNatProvider: the VPC has no NAT subnet");
    const tagValue = this.props.tagValue ?? vpc.node.path;
    const instanceType = this.props.instanceType ?? new ec2.InstanceType("t4g.small");
    const machineImage =
      this.props.machineImage ??
      ec2.MachineImage.latestAmazonLinux2023({
        cpuType:
          instanceType.architecture === ec2.InstanceArchitecture.ARM_64
            ? ec2.AmazonLinuxCpuType.ARM_64
            : ec2.AmazonLinuxCpuType.X86_64,
      });

    const sg = new ec2.SecurityGroup(vpc, "TunnatNatSecurityGroup", {
      vpc,
      description:
        "tunnat NAT instances: all from the VPC, ICMP fragmentation-needed from anywhere",
      allowAllOutbound: true,
    });
    sg.addIngressRule(
      ec2.Peer.ipv4(vpc.vpcCidrBlock),
      ec2.Port.allTraffic(),
      "traffic of the private subnets to translate",
    );
    sg.addIngressRule(
      ec2.Peer.anyIpv4(),
      ec2.Port.icmpTypeAndCode(3, 4),
      "ICMP fragmentation needed: path MTU discovery",
    );
    this.sg = sg;
    const ack = this.props.acknowledgeNagFindings !== false;
    if (ack)
      Validations.of(sg).acknowledge({
        id: "AwsSolutions-EC23",
        reason: NAG_REASONS["AwsSolutions-EC23"],
      });

    const role = new iam.Role(vpc, "TunnatNatRole", {
      assumedBy: new iam.ServicePrincipal("ec2.amazonaws.com"),
      description: "tunnat NAT instances: SSM, and attaching their own NAT network interface",
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName("AmazonSSMManagedInstanceCore")],
    });
    this.instanceRole = role;
    if (ack)
      Validations.of(role).acknowledge({
        id: "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
        reason: NAG_REASONS["AwsSolutions-IAM4"],
      });
    const eniArns: string[] = [];

    const script = this.props.cloudInitScript ?? readFileSync(CLOUD_INIT_PATH, "utf8");
    natSubnets.forEach((subnet, i) => {
      const eni = new ec2.CfnNetworkInterface(subnet, "TunnatNatInterface", {
        subnetId: subnet.subnetId,
        description: `tunnat NAT interface (${subnet.availabilityZone})`,
        sourceDestCheck: false,
        groupSet: [sg.securityGroupId],
        secondaryPrivateIpAddressCount: 1,
        // Security-group tracking must not forget a flow before tunnat does: TCP 7440 s
        // (tunnat's longest; the default is 350 s on Nitro v6 types), UDP the most the VPC
        // allows, which is still less than tunnat's (docs/ec2.md, "Security groups").
        connectionTrackingSpecification: {
          tcpEstablishedTimeout: 7440,
          udpStreamTimeout: 180,
          udpTimeout: 60,
        },
        tags: [{ key: TAG_KEY, value: tagValue }],
      });
      const eip = new ec2.CfnEIP(subnet, "TunnatNatEip", {
        domain: "vpc",
        tags: [{ key: TAG_KEY, value: tagValue }],
      });
      new ec2.CfnEIPAssociation(subnet, "TunnatNatEipAssociation", {
        allocationId: eip.attrAllocationId,
        networkInterfaceId: eni.ref,
        privateIpAddress: Fn.select(0, eni.attrSecondaryPrivateIpAddresses),
      });
      eniArns.push(
        Stack.of(subnet).formatArn({
          service: "ec2",
          resource: "network-interface",
          resourceName: eni.ref,
        }),
      );

      const userData = ec2.UserData.forLinux();
      userData.addCommands(
        `export TUNNAT_ENI_ID='${eni.ref}'`,
        `export TUNNAT_TARBALL_URL='${this.props.tarballUrl}'`,
        `export TUNNAT_TARBALL_SHA256='${this.props.tarballSha256}'`,
        `export NODE_MAJOR='${this.props.nodeMajor ?? 24}'`,
        `export TUNNAT_PRESET='${this.props.preset ?? "aws"}'`,
        // The script reads its settings from the environment. Written to a file first: run from
        // a here-document, any command in it that reads stdin would eat the rest of it.
        "install -d -m 0755 /usr/local/sbin",
        `cat >/usr/local/sbin/tunnat-cloud-init <<'TUNNAT_CLOUD_INIT'\n${script.trimEnd()}\nTUNNAT_CLOUD_INIT`,
        "bash /usr/local/sbin/tunnat-cloud-init",
        ...(this.props.extraUserData ?? []),
      );

      const launchTemplate = new ec2.LaunchTemplate(subnet, "TunnatNatLaunchTemplate", {
        instanceType,
        machineImage,
        role,
        securityGroup: sg,
        userData,
        requireImdsv2: true,
        httpPutResponseHopLimit: 1,
        associatePublicIpAddress: true,
        blockDevices: [
          {
            deviceName: "/dev/xvda",
            volume: ec2.BlockDeviceVolume.ebs(8, {
              encrypted: true,
              volumeType: ec2.EbsDeviceVolumeType.GP3,
            }),
          },
        ],
      });
      const asg = new autoscaling.AutoScalingGroup(subnet, "TunnatNatAsg", {
        vpc,
        vpcSubnets: { subnets: [subnet] },
        launchTemplate,
        minCapacity: 1,
        maxCapacity: 1,
        healthChecks: autoscaling.HealthChecks.ec2(),
      });
      if (ack)
        Validations.of(asg).acknowledge({
          id: "AwsSolutions-AS3",
          reason: NAG_REASONS["AwsSolutions-AS3"],
        });
      // Propagated to the instance at launch: the IAM condition below needs it there.
      Tags.of(asg).add(TAG_KEY, tagValue, { applyToLaunchedInstances: true });
      Tags.of(asg).add("Name", `tunnat-nat-${i + 1}`, { applyToLaunchedInstances: true });
      const nat = {
        availabilityZone: subnet.availabilityZone,
        networkInterface: eni,
        elasticIp: eip,
        autoScalingGroup: asg,
      };
      this.nats.push(nat);
      if (!this.byAz.has(subnet.availabilityZone)) this.byAz.set(subnet.availabilityZone, nat);
    });

    // Least privilege: attach only this provider's ENIs, only to instances with its tag.
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: "AttachOwnNatInterface",
        actions: ["ec2:AttachNetworkInterface"],
        resources: [
          ...eniArns,
          Stack.of(vpc).formatArn({ service: "ec2", resource: "instance", resourceName: "*" }),
        ],
        conditions: { StringEquals: { [`aws:ResourceTag/${TAG_KEY}`]: tagValue } },
      }),
    );

    if (ack) {
      const stack = Stack.of(vpc);
      const region = Token.isUnresolved(stack.region) ? "<AWS::Region>" : stack.region;
      const account = Token.isUnresolved(stack.account) ? "<AWS::AccountId>" : stack.account;
      Validations.of(role).acknowledge({
        id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:${region}:${account}:instance/*]`,
        reason: NAG_REASONS["AwsSolutions-IAM5"],
      });
    }

    for (const subnet of privateSubnets) this.configureSubnet(subnet);
  }

  configureSubnet(subnet: ec2.ISubnet): void {
    const nat = this.natFor(subnet.availabilityZone);
    const eniId = nat.networkInterface.ref;
    if (subnet instanceof ec2.Subnet) {
      // Marks the subnet's internet connectivity as established once the route exists.
      subnet.addRoute("DefaultRoute", {
        routerType: ec2.RouterType.NETWORK_INTERFACE,
        routerId: eniId,
        enablesInternetConnectivity: true,
      });
    } else {
      new ec2.CfnRoute(subnet, "DefaultRoute", {
        routeTableId: subnet.routeTable.routeTableId,
        destinationCidrBlock: "0.0.0.0/0",
        networkInterfaceId: eniId,
      });
    }
  }

  get configuredGateways(): ec2.GatewayConfig[] {
    return this.nats.map((n) => ({ az: n.availabilityZone, gatewayId: n.networkInterface.ref }));
  }

  /** The NATs, one per NAT subnet (after the VPC called configureNat). */
  get natInstances(): readonly TunnatNat[] {
    return this.nats;
  }

  get securityGroup(): ec2.SecurityGroup {
    if (!this.sg) throw new Error("TunnatNatProvider: pass it to a Vpc first");
    return this.sg;
  }

  get role(): iam.Role {
    if (!this.instanceRole) throw new Error("TunnatNatProvider: pass it to a Vpc first");
    return this.instanceRole;
  }

  private natFor(az: string): TunnatNat {
    const same = this.byAz.get(az);
    if (same) return same;
    if (this.nats.length === 0) throw new Error("TunnatNatProvider: configureNat was not called");
    const n = this.nats[this.next++ % this.nats.length];
    if (!n) throw new Error("TunnatNatProvider: no NAT");
    return n;
  }
}

function isToken(s: string): boolean {
  return Token.isUnresolved(s);
}
