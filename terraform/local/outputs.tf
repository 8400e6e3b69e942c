output "machines" {
  description = "Every machine: its name, its own address (public and private are the same: the address the backend reaches it at), the agent's port and its resource address (what a replace replaces)."
  value = [for i, m in terraform_data.machine : {
    name       = m.output.name
    public_ip  = m.output.address
    private_ip = m.output.address
    agent_port = var.agent_port
    resource   = "terraform_data.machine[${i}]"
  }]
}
