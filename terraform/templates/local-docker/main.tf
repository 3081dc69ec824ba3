# Rendered by managed RonDB (target local-docker) for cluster {{ cluster | hcl }}.
# Do not edit: the cloud front renders this module again before every apply.
#
# Every VM is a container of the agent image on the cluster's network, started and removed
# by local-exec provisioners, so this target needs no Terraform provider and runs offline.
# The containers are those the docker provider makes: same image, labels, network, address,
# volumes and limits.

terraform {
  required_version = ">= 1.4"
}

locals {
  cluster = {{ cluster | hcl }}
  network = {{ network | hcl }}
  image   = {{ image | hcl }}

  # Memory (bytes) and CPUs of a container, per VM type.
  limits = {
{%- for l in limits %}
    {{ l.key }} = { memory = {{ l.memory_bytes }}, cpus = {{ l.cpus | hcl }} }
{%- endfor %}
  }
}

resource "terraform_data" "vm" {
  for_each = local.vms

  # A new image, VM type or address makes a new container (and a new volume).
  triggers_replace = {
    image   = local.image
    vm_type = each.value.vm_type
    address = each.value.address
  }

  input = {
    container = "${local.cluster}-${each.key}"
    volume    = "${local.cluster}-${each.key}-data"
    address   = each.value.address
  }

  # Idempotent: a container left by an apply that died before recording it is replaced,
  # its volume kept.
  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = <<-EOT
      set -e
      docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
      docker volume create --label "managed-rondb.cluster=$CLUSTER" --label "managed-rondb.vm=$VM" "$VOLUME" >/dev/null
      docker volume create --label "managed-rondb.cluster=$CLUSTER" "$CLUSTER-backups" >/dev/null
      docker run -d --name "$CONTAINER" --hostname "$CONTAINER" \
        --network "$NETWORK" --ip "$ADDRESS" --memory "$MEMORY" --cpus "$CPUS" \
        --label "managed-rondb.cluster=$CLUSTER" --label "managed-rondb.vm=$VM" \
        --label "managed-rondb.role=$ROLE" --label "managed-rondb.zone=$ZONE" \
        --label "managed-rondb.vm-type=$VM_TYPE" --label "managed-rondb.storage-gib=$STORAGE_GIB" \
        --label "managed-rondb.created-by=terraform" \
        -v "$VOLUME:/var/lib/ndb-agent" -v "$CLUSTER-backups:/var/lib/ndb-backups" \
        --env-file "$ENV_FILE" "$IMAGE" >/dev/null
    EOT
    environment = {
      CLUSTER     = local.cluster
      NETWORK     = local.network
      IMAGE       = local.image
      VM          = each.key
      ROLE        = each.value.role
      ZONE        = each.value.zone
      VM_TYPE     = each.value.vm_type
      STORAGE_GIB = each.value.storage_gib
      ADDRESS     = each.value.address
      MEMORY      = local.limits[each.value.vm_type].memory
      CPUS        = local.limits[each.value.vm_type].cpus
      CONTAINER   = self.input.container
      VOLUME      = self.input.volume
      # Written 0600 by the cloud front: the agent's VM config (its one-time join ticket).
      ENV_FILE = "${path.module}/env/${each.key}.env"
    }
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/sh", "-c"]
    command     = "docker rm -f -v \"$CONTAINER\" >/dev/null 2>&1 || true; docker volume rm -f \"$VOLUME\" >/dev/null"
    environment = {
      CONTAINER = self.input.container
      VOLUME    = self.input.volume
    }
  }
}
