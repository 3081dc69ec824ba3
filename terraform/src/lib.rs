//! Terraform targets: HCL templates rendered with tera and applied with the terraform CLI.
//! Empty until the Terraform tier lands; it will implement `agent_core::CloudProvider`.
