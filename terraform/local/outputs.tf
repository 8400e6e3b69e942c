output "machines" {
  description = "Every machine: name, addresses, and its own agent port (they share 127.0.0.1)."
  value = [for m in terraform_data.machine : {
    name       = m.output.name
    public_ip  = "127.0.0.1"
    private_ip = "127.0.0.1"
    agent_port = m.output.port
  }]
}
