# Rendered by managed RonDB from the cluster's VM list: one entry per VM, keyed by its name,
# so adding or removing a VM touches only that VM's resources.

locals {
  vms = {
    "mgmd-0" = {
      role        = "mgmd"
      zone        = "a"
      vm_type     = "mini"
      storage_gib = 10
    }
    "mysqld-3" = {
      role        = "mysqld"
      zone        = "b"
      vm_type     = "small"
      storage_gib = 10
    }
    "ndbd-0-1" = {
      role        = "ndbd"
      zone        = "a"
      vm_type     = "medium"
      storage_gib = 40
    }
    "ndbd-0-2" = {
      role        = "ndbd"
      zone        = "b"
      vm_type     = "medium"
      storage_gib = 40
    }
  }
}
