output "machines" {
  description = "Every machine: name, public and private IPv4 address, and its resource address (what a replace replaces: the VM and its OS disk; its address and NIC stay)."
  value = [for i, vm in azurerm_linux_virtual_machine.machine : {
    name       = vm.name
    public_ip  = azurerm_public_ip.machine[i].ip_address
    private_ip = vm.private_ip_address
    resource   = "azurerm_linux_virtual_machine.machine[${i}]"
  }]
}

output "vm_ids" {
  description = "Azure resource ids of the VMs, in the order of machines."
  value       = azurerm_linux_virtual_machine.machine[*].id
}

output "resource_group" {
  description = "The resource group holding every resource of the deployment (delete it to clean up by hand)."
  value       = azurerm_resource_group.this.name
}
