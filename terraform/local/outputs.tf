output "machines" {
  description = "Every machine: its name and its own address (public and private are the same: the address the backend reaches it at)."
  value = [for m in terraform_data.machine : {
    name       = m.output.name
    public_ip  = m.output.address
    private_ip = m.output.address
  }]
}
