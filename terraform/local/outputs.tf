output "machines" {
  description = "Every machine: its name, its own address (public and private are the same: the address the backend reaches it at) and the agent's port."
  value = [for m in terraform_data.machine : {
    name       = m.output.name
    public_ip  = m.output.address
    private_ip = m.output.address
    agent_port = var.agent_port
  }]
}
