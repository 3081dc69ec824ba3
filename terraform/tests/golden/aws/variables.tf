# Rendered by managed RonDB (target aws). The variables a user sets, in terraform.tfvars
# next to this module; vm_configs is written by the cloud front (0600) and not by hand.

variable "region" {
  description = "AWS region of the cluster, e.g. eu-north-1."
  type        = string
}

variable "vpc_id" {
  description = "VPC the cluster's security group belongs to."
  type        = string
}

variable "subnet_ids" {
  description = "Subnet of each zone of the desired state (zone name => subnet id); each subnet lies in one availability zone."
  type        = map(string)
}

variable "ami_id" {
  description = "An Ubuntu or Debian AMI with cloud-init, for every VM."
  type        = string
}

variable "artifact_url" {
  description = "Where VMs download the ndb-agent build (a .tar.gz holding bin/ndb-agent)."
  type        = string
}

variable "agent_sha256" {
  description = "SHA-256 of the ndb-agent build at artifact_url; a VM refuses any other file."
  type        = string
}

variable "instance_types" {
  description = "EC2 instance type of each VM type of the desired state."
  type        = map(string)
  default = {
    mini    = "t3.small"
    small   = "t3.large"
    medium  = "m6i.xlarge"
    large   = "r6i.2xlarge"
    xlarge  = "r6i.4xlarge"
    xxlarge = "r6i.8xlarge"
  }
}

variable "data_volume_type" {
  description = "EBS type of each VM's data volume."
  type        = string
  default     = "gp3"
}

variable "ssh_key_name" {
  description = "EC2 key pair for SSH to the VMs; null for none."
  type        = string
  default     = null
}

variable "vm_configs" {
  description = "Each VM's agent configuration (JSON: its one-time join ticket and the cluster CA's certificate), by VM name."
  type        = map(string)
  sensitive   = true
}
