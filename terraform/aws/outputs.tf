output "machines" {
  description = "Every machine: name, public and private IPv4 address, and its resource address (what a replace replaces)."
  value = [for i, m in aws_instance.machine : {
    name       = m.tags["Name"]
    public_ip  = m.public_ip
    private_ip = m.private_ip
    resource   = "aws_instance.machine[${i}]"
  }]
}

output "instance_ids" {
  description = "EC2 instance ids, in the order of machines."
  value       = aws_instance.machine[*].id
}

output "network" {
  description = "The VPC, subnet and security group created for the deployment."
  value = {
    region            = var.region
    availability_zone = local.availability_zone
    vpc_id            = aws_vpc.this.id
    subnet_id         = aws_subnet.machines.id
    security_group_id = aws_security_group.machines.id
  }
}
