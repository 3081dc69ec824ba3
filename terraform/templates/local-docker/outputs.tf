# Rendered by managed RonDB (target local-docker). Read by the cloud front after each apply.

output "vms" {
  description = "Each VM's address and agent endpoint, by VM name."
  value = {
    for name, vm in terraform_data.vm : name => {
      address        = vm.output.address
      agent_endpoint = "${vm.output.address}:{{ agent_grpc_port }}"
    }
  }
}
