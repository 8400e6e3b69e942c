output "machines" {
  description = "Every machine: name, public and private IPv4 address, and its resource address (what a replace replaces)."
  value = [for i, m in google_compute_instance.machine : {
    name       = m.name
    public_ip  = m.network_interface[0].access_config[0].nat_ip
    private_ip = m.network_interface[0].network_ip
    resource   = "google_compute_instance.machine[${i}]"
  }]
}

output "instance_ids" {
  description = "Compute Engine instance ids, in the order of machines."
  value       = google_compute_instance.machine[*].instance_id
}

output "network" {
  description = "The network, subnet and zone created for the deployment."
  value = {
    project = google_compute_network.this.project
    zone    = local.zone
    network = google_compute_network.this.name
    subnet  = google_compute_subnetwork.machines.name
  }
}
