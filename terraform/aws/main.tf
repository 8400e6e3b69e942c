# terraform/aws: nim machines as EC2 instances in a VPC of their own.
#
# Everything is created per deployment (VPC, internet gateway, subnet, route table, security
# group, optional key pair, instances), named <name_prefix>-<deployment_id> and tagged
# nim-deployment-id = <deployment_id>, so a fresh account works and a deployment can be found and
# removed by its tag. Machines boot terraform/shared/bootstrap, which installs and starts
# nim-agent; the agent port is reachable only from allowed_cidrs, SSH only from
# ssh_allowed_cidrs (none by default).

locals {
  name = "${var.name_prefix}-${var.deployment_id}"
  tags = merge(var.tags, {
    "nim-deployment-id" = var.deployment_id
    "nim-managed-by"    = "nim-backend"
  })
  availability_zone = coalesce(var.availability_zone, try(sort(data.aws_ec2_instance_type_offerings.zones.locations)[0], null), "${var.region}a")
}

# Canonical's Ubuntu 24.04 LTS, the newest build (owner 099720109477 is Canonical).
data "aws_ami" "ubuntu" {
  most_recent = true
  owners      = ["099720109477"]

  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

# Zones of the region that offer the instance type (GPU types are not in every zone).
data "aws_ec2_instance_type_offerings" "zones" {
  location_type = "availability-zone"

  filter {
    name   = "instance-type"
    values = [var.instance_type]
  }
}

data "aws_ec2_instance_type" "chosen" {
  instance_type = var.instance_type
}

module "bootstrap" {
  source = "../shared/bootstrap"

  agent_download_url = var.agent_download_url
  agent_sha256       = var.agent_sha256
  agent_port         = var.agent_port
  agent_token        = var.agent_token
  agent_tls_cert     = var.agent_tls_cert
  agent_tls_key      = var.agent_tls_key
  no_new_privileges  = var.agent_no_new_privileges
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = local.name }
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = { Name = local.name }
}

resource "aws_subnet" "machines" {
  vpc_id                  = aws_vpc.this.id
  cidr_block              = cidrsubnet(var.vpc_cidr, 24 - tonumber(split("/", var.vpc_cidr)[1]), 0)
  availability_zone       = local.availability_zone
  map_public_ip_on_launch = true

  tags = { Name = local.name }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }

  tags = { Name = local.name }
}

resource "aws_route_table_association" "machines" {
  subnet_id      = aws_subnet.machines.id
  route_table_id = aws_route_table.public.id
}

resource "aws_security_group" "machines" {
  name        = local.name
  description = "nim deployment ${var.deployment_id}: agent port from allowed_cidrs, SSH from ssh_allowed_cidrs"
  vpc_id      = aws_vpc.this.id

  tags = { Name = local.name }
}

resource "aws_vpc_security_group_ingress_rule" "agent" {
  for_each = toset(var.allowed_cidrs)

  security_group_id = aws_security_group.machines.id
  description       = "nim-agent"
  ip_protocol       = "tcp"
  from_port         = var.agent_port
  to_port           = var.agent_port
  cidr_ipv4         = each.value

  tags = { Name = "${local.name}-agent" }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = toset(var.ssh_allowed_cidrs)

  security_group_id = aws_security_group.machines.id
  description       = "ssh"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value

  tags = { Name = "${local.name}-ssh" }
}

# Machines download the agent and packages; everything outbound is allowed.
resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.machines.id
  description       = "all outbound"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"

  tags = { Name = "${local.name}-egress" }
}

resource "aws_key_pair" "ssh" {
  count = var.ssh_public_key == null ? 0 : 1

  key_name   = local.name
  public_key = var.ssh_public_key

  tags = { Name = local.name }
}

resource "aws_instance" "machine" {
  count = var.machine_count

  ami                    = coalesce(var.ami_id, data.aws_ami.ubuntu.id)
  instance_type          = var.instance_type
  subnet_id              = aws_subnet.machines.id
  vpc_security_group_ids = [aws_security_group.machines.id]
  key_name               = var.ssh_public_key == null ? null : aws_key_pair.ssh[0].key_name
  user_data              = module.bootstrap.user_data

  associate_public_ip_address = true

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.disk_size_gb
    encrypted             = true
    delete_on_termination = true
  }

  # default_tags do not reach the volumes an instance creates.
  volume_tags = merge(local.tags, { Name = "${local.name}-${count.index}" })

  # IMDSv2 only, and not reachable from containers one hop away: user data holds the agent's
  # token and key.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = { Name = "${local.name}-${count.index}" }

  lifecycle {
    # User data only matters at first boot; a new agent build or re-apply must not replace
    # running machines (new machines get the current values).
    ignore_changes = [user_data, ami]

    precondition {
      condition     = contains(data.aws_ec2_instance_type.chosen.supported_architectures, "x86_64")
      error_message = "instance_type ${var.instance_type} is not x86_64; the agent binary and the Ubuntu image are x86_64 (Graviton types are not supported yet)."
    }

    precondition {
      condition     = var.availability_zone != null || length(data.aws_ec2_instance_type_offerings.zones.locations) > 0
      error_message = "instance_type ${var.instance_type} is not offered in any zone of ${var.region}."
    }
  }
}
