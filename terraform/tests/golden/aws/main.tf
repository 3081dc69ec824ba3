# Rendered by managed RonDB (target aws) for cluster "demo".
# Do not edit: the cloud front renders this module again before every apply.
#
# One instance per VM with a data volume of the VM's storage size, in the subnet of the
# VM's zone. Inside the cluster only the agent, RonDB and MySQL ports are open.

locals {
  cluster = "demo"

  # The ports VMs of the cluster open to each other, and to nothing else.
  cluster_ports = {
    agent_grpc = 7100
    agent_http = 8181
    mgmd       = 1186
    ndbd       = 11860
    mysqld     = 3306
    rdrs       = 4406
  }
}

resource "aws_security_group" "cluster" {
  name_prefix = "${local.cluster}-"
  description = "managed RonDB cluster ${local.cluster}: agent, RonDB and MySQL ports between its VMs"
  vpc_id      = var.vpc_id

  dynamic "ingress" {
    for_each = local.cluster_ports
    content {
      description = ingress.key
      from_port   = ingress.value
      to_port     = ingress.value
      protocol    = "tcp"
      self        = true
    }
  }

  # VMs download the agent and RonDB builds.
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = {
    "managed-rondb.cluster" = local.cluster
  }
}

resource "aws_instance" "vm" {
  for_each = local.vms

  ami                    = var.ami_id
  instance_type          = var.instance_types[each.value.vm_type]
  subnet_id              = var.subnet_ids[each.value.zone]
  vpc_security_group_ids = [aws_security_group.cluster.id]
  key_name               = var.ssh_key_name

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    vm_config    = var.vm_configs[each.key]
    artifact_url = var.artifact_url
    agent_sha256 = var.agent_sha256
  })
  user_data_replace_on_change = true

  metadata_options {
    http_tokens = "required"
  }

  tags = {
    Name                        = "${local.cluster}-${each.key}"
    "managed-rondb.cluster"     = local.cluster
    "managed-rondb.vm"          = each.key
    "managed-rondb.role"        = each.value.role
    "managed-rondb.zone"        = each.value.zone
    "managed-rondb.vm-type"     = each.value.vm_type
    "managed-rondb.storage-gib" = tostring(each.value.storage_gib)
  }
}

resource "aws_ebs_volume" "data" {
  for_each = local.vms

  availability_zone = aws_instance.vm[each.key].availability_zone
  size              = each.value.storage_gib
  type              = var.data_volume_type
  encrypted         = true

  tags = {
    Name                    = "${local.cluster}-${each.key}-data"
    "managed-rondb.cluster" = local.cluster
    "managed-rondb.vm"      = each.key
  }
}

resource "aws_volume_attachment" "data" {
  for_each = local.vms

  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data[each.key].id
  instance_id = aws_instance.vm[each.key].id
}
