# terraform/azure: nim machines as Linux VMs in a resource group of their own.
#
# Everything is created per deployment (resource group, virtual network, subnet, network
# security group, one public IP and NIC per machine, the VMs), named <name_prefix>-<deployment_id>
# and tagged nim-deployment-id = <deployment_id>; deleting the resource group removes it all.
# Machines boot terraform/shared/bootstrap (as custom data, which cloud-init runs), which
# installs and starts nim-agent; the agent port is reachable only from allowed_cidrs, SSH only
# from ssh_allowed_cidrs (none by default).

locals {
  name = "${var.name_prefix}-${var.deployment_id}"
  tags = merge(var.tags, {
    "nim-deployment-id" = var.deployment_id
    "nim-managed-by"    = "nim-backend"
  })
  admin_username = "ubuntu"
  ssh_public_key = var.ssh_public_key != null ? var.ssh_public_key : trimspace(tls_private_key.unused[0].public_key_openssh)
}

# Azure insists on a login method for Linux VMs. Without ssh_public_key the VM gets this key,
# whose private half is never output (it is in the state file; port 22 is closed anyway).
resource "tls_private_key" "unused" {
  count = var.ssh_public_key == null ? 1 : 0

  algorithm = "RSA"
  rsa_bits  = 4096
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

resource "azurerm_resource_group" "this" {
  name     = local.name
  location = var.location
  tags     = local.tags
}

resource "azurerm_virtual_network" "this" {
  name                = local.name
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  address_space       = [var.vnet_cidr]
  tags                = local.tags
}

resource "azurerm_subnet" "machines" {
  name                 = "${local.name}-machines"
  resource_group_name  = azurerm_resource_group.this.name
  virtual_network_name = azurerm_virtual_network.this.name
  address_prefixes     = [cidrsubnet(var.vnet_cidr, 24 - tonumber(split("/", var.vnet_cidr)[1]), 0)]
}

resource "azurerm_network_security_group" "machines" {
  name                = local.name
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  tags                = local.tags

  security_rule {
    name                       = "nim-agent"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = tostring(var.agent_port)
    source_address_prefixes    = var.allowed_cidrs
    destination_address_prefix = "*"
  }

  dynamic "security_rule" {
    for_each = length(var.ssh_allowed_cidrs) > 0 ? [1] : []
    content {
      name                       = "ssh"
      priority                   = 110
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = "Tcp"
      source_port_range          = "*"
      destination_port_range     = "22"
      source_address_prefixes    = var.ssh_allowed_cidrs
      destination_address_prefix = "*"
    }
  }

  # Azure's default rules allow traffic from inside the virtual network and the load balancer;
  # deny the rest of the Internet explicitly so nothing else is ever opened by accident.
  security_rule {
    name                       = "deny-internet-inbound"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "Internet"
    destination_address_prefix = "*"
  }
}

resource "azurerm_subnet_network_security_group_association" "machines" {
  subnet_id                 = azurerm_subnet.machines.id
  network_security_group_id = azurerm_network_security_group.machines.id
}

resource "azurerm_public_ip" "machine" {
  count = var.machine_count

  name                = "${local.name}-${count.index}"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  allocation_method   = "Static"
  sku                 = "Standard"
  zones               = var.zone == null ? null : [var.zone]
  tags                = local.tags
}

resource "azurerm_network_interface" "machine" {
  count = var.machine_count

  name                = "${local.name}-${count.index}"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  tags                = local.tags

  ip_configuration {
    name                          = "primary"
    subnet_id                     = azurerm_subnet.machines.id
    private_ip_address_allocation = "Dynamic"
    public_ip_address_id          = azurerm_public_ip.machine[count.index].id
  }
}

resource "azurerm_linux_virtual_machine" "machine" {
  count = var.machine_count

  name                  = "${local.name}-${count.index}"
  computer_name         = "${local.name}-${count.index}"
  location              = azurerm_resource_group.this.location
  resource_group_name   = azurerm_resource_group.this.name
  size                  = var.vm_size
  zone                  = var.zone
  network_interface_ids = [azurerm_network_interface.machine[count.index].id]
  admin_username        = local.admin_username
  custom_data           = base64encode(module.bootstrap.user_data)
  tags                  = local.tags

  disable_password_authentication = true

  admin_ssh_key {
    username   = local.admin_username
    public_key = local.ssh_public_key
  }

  os_disk {
    name                 = "${local.name}-${count.index}-os"
    caching              = "ReadWrite"
    storage_account_type = var.os_disk_type
    disk_size_gb         = var.disk_size_gb
  }

  source_image_reference {
    publisher = var.image.publisher
    offer     = var.image.offer
    sku       = var.image.sku
    version   = var.image.version
  }

  # The NSG must be on the subnet before the agent starts listening.
  depends_on = [azurerm_subnet_network_security_group_association.machines]

  lifecycle {
    # Custom data only matters at first boot (and changing it would recreate the VM); a new agent
    # build or re-apply must not replace running machines. New machines get the current values.
    ignore_changes = [custom_data, admin_ssh_key]
  }
}
