# Rendered by managed RonDB from the cluster's VM list: one entry per VM, keyed by its name,
# so adding or removing a VM touches only that VM's resources.

locals {
  vms = {
{%- for vm in vms %}
    {{ vm.name | hcl }} = {
      role        = {{ vm.role | hcl }}
      zone        = {{ vm.zone | hcl }}
      vm_type     = {{ vm.vm_type | hcl }}
      storage_gib = {{ vm.storage_gib }}
{%- if vm.address %}
      address     = {{ vm.address | hcl }}
{%- endif %}
    }
{%- endfor %}
  }
}
