/**
 * TunnatNatProvider, synthesized: no AWS account is reachable here, so these tests check the
 * CloudFormation the construct produces (aws-cdk-lib/assertions) and run cdk-nag's AWS
 * Solutions rules on it; nothing is deployed.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { App, Stack } from "aws-cdk-lib";
import { Match, Template } from "aws-cdk-lib/assertions";
import * as ec2 from "aws-cdk-lib/aws-ec2";
import { AwsSolutionsChecks } from "cdk-nag";
import { parse } from "yaml";
import { cloudFormationStack, cloudFormationYaml } from "../src/cloudformation.js";
import {
  CLOUD_INIT_PATH,
  NAG_REASONS,
  TAG_KEY,
  TunnatNatProvider,
  USER_DATA_MAX,
} from "../src/nat-provider.js";

const SHA = "a".repeat(64);
const URL = "https://github.com/example/tunnat/releases/download/v0.1.0/tunnat-0.1.0.tgz";

function build(opts: { azs?: number; acknowledge?: boolean } = {}) {
  const app = new App();
  const stack = new Stack(app, "Net", { env: { account: "123456789012", region: "eu-west-1" } });
  const provider = new TunnatNatProvider({
    tarballUrl: URL,
    tarballSha256: SHA,
    acknowledgeNagFindings: opts.acknowledge ?? true,
  });
  const vpc = new ec2.Vpc(stack, "Vpc", {
    ipAddresses: ec2.IpAddresses.cidr("10.0.0.0/16"),
    maxAzs: opts.azs ?? 2,
    natGatewayProvider: provider,
    flowLogs: { all: { trafficType: ec2.FlowLogTrafficType.REJECT } },
  });
  const template = Template.fromStack(stack);
  return { app, stack, vpc, provider, template };
}

test("one ENI per AZ, source/destination check off, one secondary IP, its Elastic IP", () => {
  const { template } = build();
  template.resourceCountIs("AWS::EC2::NetworkInterface", 2);
  template.allResourcesProperties("AWS::EC2::NetworkInterface", {
    SourceDestCheck: false,
    SecondaryPrivateIpAddressCount: 1,
    ConnectionTrackingSpecification: {
      TcpEstablishedTimeout: 7440,
      UdpStreamTimeout: 180,
      UdpTimeout: 60,
    },
    Tags: Match.arrayWith([{ Key: TAG_KEY, Value: "Net/Vpc" }]),
  });
  template.resourceCountIs("AWS::EC2::EIP", 2);
  template.resourceCountIs("AWS::EC2::NatGateway", 0);
  const assoc = template.findResources("AWS::EC2::EIPAssociation");
  assert.equal(Object.keys(assoc).length, 2);
  for (const a of Object.values(assoc)) {
    const p = a.Properties;
    // The EIP goes to the ENI's secondary IP: the NAT address, which the host does not own.
    assert.deepEqual(p.PrivateIpAddress["Fn::Select"][0], 0);
    assert.equal(
      p.PrivateIpAddress["Fn::Select"][1]["Fn::GetAtt"][1],
      "SecondaryPrivateIpAddresses",
    );
    assert.equal(
      p.NetworkInterfaceId.Ref,
      p.PrivateIpAddress["Fn::Select"][1]["Fn::GetAtt"][0],
      "the address is the same ENI's",
    );
  }
});

test("each private subnet routes 0.0.0.0/0 to the ENI of the NAT in its own AZ", () => {
  const { template, vpc, provider } = build();
  const routes = template.findResources("AWS::EC2::Route", {
    Properties: { DestinationCidrBlock: "0.0.0.0/0", NetworkInterfaceId: Match.anyValue() },
  });
  assert.equal(Object.keys(routes).length, vpc.privateSubnets.length);
  const stack = Stack.of(vpc);
  for (const subnet of vpc.privateSubnets) {
    const nat = provider.natInstances.find((n) => n.availabilityZone === subnet.availabilityZone);
    assert.ok(nat, `a NAT in ${subnet.availabilityZone}`);
    const want = stack.resolve(nat.networkInterface.ref);
    const rt = stack.resolve(subnet.routeTable.routeTableId);
    const route = Object.values(routes).find(
      (r) => JSON.stringify(r.Properties.RouteTableId) === JSON.stringify(rt),
    );
    assert.ok(route, `a default route in ${subnet.node.path}`);
    assert.deepEqual(route.Properties.NetworkInterfaceId, want);
  }
  // The public subnets keep their internet gateway route.
  template.hasResourceProperties("AWS::EC2::Route", {
    DestinationCidrBlock: "0.0.0.0/0",
    GatewayId: Match.anyValue(),
  });
});

test("an auto-scaling group of one per AZ, IMDSv2 only, encrypted disk, public IP for the host", () => {
  const { template } = build();
  template.resourceCountIs("AWS::AutoScaling::AutoScalingGroup", 2);
  template.allResourcesProperties("AWS::AutoScaling::AutoScalingGroup", {
    MinSize: "1",
    MaxSize: "1",
    HealthCheckType: "EC2",
    Tags: Match.arrayWith([{ Key: TAG_KEY, Value: "Net/Vpc", PropagateAtLaunch: true }]),
  });
  template.allResourcesProperties("AWS::EC2::LaunchTemplate", {
    LaunchTemplateData: Match.objectLike({
      InstanceType: "t4g.small",
      MetadataOptions: { HttpTokens: "required", HttpPutResponseHopLimit: 1 },
      NetworkInterfaces: [Match.objectLike({ AssociatePublicIpAddress: true, DeviceIndex: 0 })],
      BlockDeviceMappings: [Match.objectLike({ Ebs: Match.objectLike({ Encrypted: true }) })],
    }),
  });
});

test("the security group: all from the VPC CIDR, ICMP 3/4 from anywhere, nothing else inbound", () => {
  const { template } = build();
  template.resourceCountIs("AWS::EC2::SecurityGroup", 1);
  const [sg] = Object.values(template.findResources("AWS::EC2::SecurityGroup"));
  assert.ok(sg);
  const ingress = sg.Properties.SecurityGroupIngress as Record<string, unknown>[];
  assert.equal(ingress.length, 2);
  const fromVpc = ingress.find((r) => r.IpProtocol === "-1");
  assert.match(JSON.stringify(fromVpc?.CidrIp), /CidrBlock/, "the VPC's CIDR block");
  const icmp = ingress.find((r) => r.IpProtocol === "icmp");
  assert.deepEqual(
    { cidr: icmp?.CidrIp, type: icmp?.FromPort, code: icmp?.ToPort },
    { cidr: "0.0.0.0/0", type: 3, code: 4 },
    "ICMP destination unreachable / fragmentation needed (PMTUD)",
  );
});

test("the role: SSM core and AttachNetworkInterface on its own ENIs and tagged instances only", () => {
  const { template, stack } = build();
  template.hasResourceProperties("AWS::IAM::Role", {
    AssumeRolePolicyDocument: Match.objectLike({
      Statement: [Match.objectLike({ Principal: { Service: "ec2.amazonaws.com" } })],
    }),
    ManagedPolicyArns: [
      {
        "Fn::Join": [
          "",
          ["arn:", { Ref: "AWS::Partition" }, ":iam::aws:policy/AmazonSSMManagedInstanceCore"],
        ],
      },
    ],
  });
  const policies = Object.values(template.findResources("AWS::IAM::Policy"));
  const statements = policies.flatMap(
    (p) => p.Properties.PolicyDocument.Statement as Record<string, unknown>[],
  );
  const attach = statements.filter((s) => JSON.stringify(s.Action).includes("ec2:"));
  assert.equal(attach.length, 1, "one EC2 statement");
  const s = attach[0] as Record<string, unknown>;
  assert.equal(s.Action, "ec2:AttachNetworkInterface", "the only EC2 action");
  assert.deepEqual(s.Condition, { StringEquals: { [`aws:ResourceTag/${TAG_KEY}`]: "Net/Vpc" } });
  const resources = stack.resolve(s.Resource) as unknown[];
  const text = resources.map((r) => JSON.stringify(r));
  assert.equal(text.filter((r) => r.includes(":network-interface/")).length, 2, "both ENIs");
  assert.ok(
    text.some((r) => r.includes(":instance/*")),
    "instances, limited by the tag",
  );
  assert.ok(!text.some((r) => r === '"*"'), "no bare *");
  const actions = statements.flatMap((x) => [x.Action].flat());
  assert.ok(!actions.some((a) => a === "*" || a === "ec2:*"), "no wildcard action");
});

test("user data: the settings, then deploy/cloud-init.sh verbatim; under EC2's 16 KiB", () => {
  const { template, stack } = build({ azs: 1 });
  const [lt] = Object.values(template.findResources("AWS::EC2::LaunchTemplate"));
  assert.ok(lt);
  const parts = (
    stack.resolve(lt.Properties.LaunchTemplateData.UserData["Fn::Base64"]) as {
      "Fn::Join": [string, unknown[]];
    }
  )["Fn::Join"][1];
  const text = parts.map((p) => (typeof p === "string" ? p : "<token>")).join("");
  assert.match(text, /^#!\/bin\/bash\n/);
  assert.match(text, /export TUNNAT_ENI_ID='<token>'/);
  assert.ok(text.includes(`export TUNNAT_TARBALL_URL='${URL}'`));
  assert.ok(text.includes(`export TUNNAT_TARBALL_SHA256='${SHA}'`));
  assert.match(text, /export NODE_MAJOR='24'/);
  assert.match(text, /export TUNNAT_PRESET='aws'/);
  const script = readFileSync(CLOUD_INIT_PATH, "utf8").trimEnd();
  assert.ok(text.includes(`<<'TUNNAT_CLOUD_INIT'\n${script}\nTUNNAT_CLOUD_INIT\n`));
  assert.ok(!script.split("\n").includes("TUNNAT_CLOUD_INIT"), "the here-doc end is not in it");
  assert.ok(Buffer.byteLength(text) < USER_DATA_MAX, `${Buffer.byteLength(text)} bytes`);
});

test("natGateways: 1 — one NAT, and the other AZ's private subnets route to it", () => {
  const app = new App();
  const stack = new Stack(app, "One", { env: { account: "123456789012", region: "eu-west-1" } });
  const provider = new TunnatNatProvider({ tarballUrl: URL, tarballSha256: SHA });
  const vpc = new ec2.Vpc(stack, "Vpc", {
    maxAzs: 2,
    natGateways: 1,
    natGatewayProvider: provider,
  });
  const template = Template.fromStack(stack);
  template.resourceCountIs("AWS::EC2::NetworkInterface", 1);
  template.resourceCountIs("AWS::AutoScaling::AutoScalingGroup", 1);
  const eni = stack.resolve(provider.natInstances[0]?.networkInterface.ref);
  const routes = template.findResources("AWS::EC2::Route", {
    Properties: { NetworkInterfaceId: eni },
  });
  assert.equal(Object.keys(routes).length, vpc.privateSubnets.length);
  assert.equal(vpc.privateSubnets.length, 2);
});

test("an x86 instance type gets the x86_64 Amazon Linux 2023; nodeMajor and preset reach the user data", () => {
  const app = new App();
  const stack = new Stack(app, "X86", { env: { account: "123456789012", region: "eu-west-1" } });
  new ec2.Vpc(stack, "Vpc", {
    maxAzs: 1,
    natGatewayProvider: new TunnatNatProvider({
      tarballUrl: URL,
      tarballSha256: SHA,
      instanceType: new ec2.InstanceType("c7i.large"),
      nodeMajor: 22,
      preset: "default",
    }),
  });
  const json = JSON.stringify(Template.fromStack(stack).toJSON());
  assert.match(json, /al2023-ami-kernel-[0-9.]+-x86_64/);
  assert.doesNotMatch(json, /al2023-ami-kernel-[0-9.]+-arm64/);
  assert.match(json, /export NODE_MAJOR='22'/);
  assert.match(json, /export TUNNAT_PRESET='default'/);
});

test("bad settings are refused when the construct is made", () => {
  assert.throws(
    () => new TunnatNatProvider({ tarballUrl: URL, tarballSha256: "abc" }),
    /tarballSha256: expected 64 lower-case hex digits/,
  );
  assert.throws(
    () => new TunnatNatProvider({ tarballUrl: "http://example.com/t.tgz", tarballSha256: SHA }),
    /tarballUrl: expected an https:\/\/ URL/,
  );
  assert.throws(
    () => new TunnatNatProvider({ tarballUrl: "https://x/'; rm -rf /", tarballSha256: SHA }),
    /tarballUrl/,
  );
});

test("cdk-nag AwsSolutionsChecks: no violation left; each accepted finding has its reason", () => {
  const { app, stack } = build();
  const report = new AwsSolutionsChecks(app, { verbose: true }).validateScope(stack);
  const show = report.violations.map((v) => `${v.ruleName}: ${v.description.split("\n")[0]}`);
  assert.deepEqual(show, [], "no unacknowledged finding");
  assert.equal(report.success, true);
  for (const reason of Object.values(NAG_REASONS)) assert.ok(reason.length > 60);
});

test("cdk-nag without the acknowledgements reports exactly the four accepted findings", () => {
  const { app, stack } = build({ acknowledge: false });
  const report = new AwsSolutionsChecks(app).validateScope(stack);
  const rules = [...new Set(report.violations.map((v) => v.ruleName.replace(/\[.*$/, "")))].sort();
  assert.deepEqual(rules, Object.keys(NAG_REASONS).sort());
  assert.equal(report.success, false);
});

test("cdk-nag on the CloudFormation template's stack (imported VPC): no violation left", () => {
  const stack = cloudFormationStack();
  const report = new AwsSolutionsChecks(stack.node.root).validateScope(stack);
  assert.deepEqual(
    report.violations.map((v) => v.ruleName),
    [],
  );
});

test("cloudformation/tunnat-nat.yaml equals a fresh synth (npm run synth:cfn rewrites it)", () => {
  const file = join(__dirname, "..", "..", "cloudformation", "tunnat-nat.yaml");
  assert.equal(readFileSync(file, "utf8"), cloudFormationYaml());
});

test("the CloudFormation template: parameters for the VPC, subnet, route tables and tarball", () => {
  const template = Template.fromJSON(parse(cloudFormationYaml()) as Record<string, unknown>);
  for (const p of [
    "VpcId",
    "VpcCidr",
    "PublicSubnetId",
    "AvailabilityZone",
    "PrivateRouteTable1",
    "TarballUrl",
    "TarballSha256",
    "InstanceType",
  ])
    template.hasParameter(p, Match.anyValue());
  template.hasParameter("TarballSha256", { AllowedPattern: "^[0-9a-f]{64}$" });
  template.resourceCountIs("AWS::EC2::Route", 3);
  template.hasResource("AWS::EC2::Route", { Condition: "HasPrivateRouteTable2" });
  template.hasResourceProperties("AWS::EC2::Route", {
    RouteTableId: { Ref: "PrivateRouteTable1" },
    NetworkInterfaceId: Match.anyValue(),
  });
  template.hasResourceProperties("AWS::EC2::NetworkInterface", {
    SubnetId: { Ref: "PublicSubnetId" },
    SourceDestCheck: false,
  });
  template.hasResourceProperties("AWS::EC2::SecurityGroup", {
    SecurityGroupIngress: Match.arrayWith([Match.objectLike({ CidrIp: { Ref: "VpcCidr" } })]),
  });
  template.hasOutput("NatAddress", Match.anyValue());
});
