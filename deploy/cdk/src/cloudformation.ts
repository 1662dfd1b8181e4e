/**
 * The plain CloudFormation template, for users without CDK: one tunnat NAT in an existing VPC
 * (deploy it once per availability zone). Parameters name the VPC, its CIDR, the public subnet
 * the NAT lives in, up to three private route tables to point at it, and the release tarball.
 * Synthesized from the same TunnatNatProvider (`npm run synth:cfn` writes
 * cloudformation/tunnat-nat.yaml; a test holds the checked-in file equal to a fresh synth).
 */
import {
  App,
  Aws,
  BootstraplessSynthesizer,
  CfnCondition,
  CfnOutput,
  CfnParameter,
  Fn,
  Stack,
} from "aws-cdk-lib";
import * as ec2 from "aws-cdk-lib/aws-ec2";
import { stringify } from "yaml";
import { TunnatNatProvider } from "./nat-provider.js";

export const ROUTE_TABLES = 3;

/** Graviton instance types the template offers (the AMI parameter is the arm64 one). */
export const INSTANCE_TYPES = [
  "t4g.nano",
  "t4g.micro",
  "t4g.small",
  "t4g.medium",
  "c7gn.medium",
  "c7gn.large",
  "c7gn.xlarge",
  "c6gn.medium",
  "c6gn.large",
];

export function cloudFormationStack(): Stack {
  const app = new App({ analyticsReporting: false });
  const stack = new Stack(app, "TunnatNat", {
    synthesizer: new BootstraplessSynthesizer(),
    description: "tunnat NAT instance (one AZ): ENI + Elastic IP, an auto-scaling group of one",
  });
  const p = (id: string, props: ConstructorParameters<typeof CfnParameter>[2]) =>
    new CfnParameter(stack, id, props);
  const vpcId = p("VpcId", { type: "AWS::EC2::VPC::Id", description: "the VPC" });
  const vpcCidr = p("VpcCidr", {
    type: "String",
    description: "the VPC's CIDR block (the security group lets it in)",
    allowedPattern: "^\\d{1,3}(\\.\\d{1,3}){3}/\\d{1,2}$",
  });
  const subnetId = p("PublicSubnetId", {
    type: "AWS::EC2::Subnet::Id",
    description: "a public subnet (default route to an internet gateway) for the NAT",
  });
  const az = p("AvailabilityZone", {
    type: "AWS::EC2::AvailabilityZone::Name",
    description: "the public subnet's availability zone",
  });
  const tables: CfnParameter[] = [];
  for (let i = 1; i <= ROUTE_TABLES; i++)
    tables.push(
      p(`PrivateRouteTable${i}`, {
        type: "String",
        default: i === 1 ? undefined : "",
        description: `route table of private subnets whose 0.0.0.0/0 goes to this NAT${i === 1 ? "" : " (optional)"}`,
        allowedPattern: i === 1 ? "^rtb-[0-9a-f]+$" : "^(rtb-[0-9a-f]+)?$",
      }),
    );
  const url = p("TarballUrl", {
    type: "String",
    description: "https URL of the tunnat release tarball (npm pack output)",
    allowedPattern: "^https://[^'\\s]+$",
  });
  const sha = p("TarballSha256", {
    type: "String",
    description: "SHA-256 of the tarball (sha256sum), 64 hex digits",
    allowedPattern: "^[0-9a-f]{64}$",
  });
  const type = p("InstanceType", {
    type: "String",
    default: "t4g.small",
    allowedValues: INSTANCE_TYPES,
    description: "instance type (arm64)",
  });

  const vpc = ec2.Vpc.fromVpcAttributes(stack, "Vpc", {
    vpcId: vpcId.valueAsString,
    vpcCidrBlock: vpcCidr.valueAsString,
    availabilityZones: [az.valueAsString],
    publicSubnetIds: [subnetId.valueAsString],
  });
  const natSubnet = ec2.Subnet.fromSubnetAttributes(stack, "PublicSubnet", {
    subnetId: subnetId.valueAsString,
    availabilityZone: az.valueAsString,
  });
  const privateSubnets = tables.map((t, i) =>
    ec2.Subnet.fromSubnetAttributes(stack, `Private${i + 1}`, {
      subnetId: `private-${i + 1}`,
      availabilityZone: az.valueAsString,
      routeTableId: t.valueAsString,
    }),
  );
  const provider = new TunnatNatProvider({
    tarballUrl: url.valueAsString,
    tarballSha256: sha.valueAsString,
    instanceType: new ec2.InstanceType(type.valueAsString),
    machineImage: ec2.MachineImage.latestAmazonLinux2023({
      cpuType: ec2.AmazonLinuxCpuType.ARM_64,
    }),
    tagValue: Aws.STACK_NAME,
  });
  provider.configureNatIn({ vpc, natSubnets: [natSubnet], privateSubnets });
  // The optional route tables: a route only where one was given.
  privateSubnets.forEach((s, i) => {
    if (i === 0) return;
    const given = new CfnCondition(stack, `HasPrivateRouteTable${i + 1}`, {
      expression: Fn.conditionNot(Fn.conditionEquals(tables[i]?.valueAsString ?? "", "")),
    });
    const route = s.node.findChild("DefaultRoute") as ec2.CfnRoute;
    route.cfnOptions.condition = given;
  });
  const nat = provider.natInstances[0];
  if (nat) {
    new CfnOutput(stack, "NatAddress", {
      description: "the Elastic IP the internet sees",
      value: nat.elasticIp.ref,
      exportName: Fn.join("-", [Aws.STACK_NAME, "NatAddress"]),
    });
    new CfnOutput(stack, "NatInterface", {
      description: "the NAT's network interface (the private routes' target)",
      value: nat.networkInterface.ref,
      exportName: Fn.join("-", [Aws.STACK_NAME, "NatInterface"]),
    });
  }
  return stack;
}

/** The template as YAML, as checked in. */
export function cloudFormationYaml(): string {
  const stack = cloudFormationStack();
  const assembly = (stack.node.root as App).synth();
  const template = assembly.getStackByName(stack.stackName).template as unknown;
  return `# Generated from deploy/cdk (npm run synth:cfn); do not edit: edit the construct.\n${stringify(template, { lineWidth: 0 })}`;
}
