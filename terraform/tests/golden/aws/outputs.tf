# Rendered by managed RonDB (target aws). Read by the cloud front after each apply.

output "vms" {
  description = "Each VM's address and agent endpoint, by VM name."
  value = {
    for name, vm in aws_instance.vm : name => {
      address        = vm.private_ip
      agent_endpoint = "${vm.private_ip}:7100"
    }
  }
}
