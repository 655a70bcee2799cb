variable "bucket_name" {
  description = "Name of the archive bucket (globally unique)."
  type        = string
}

variable "prefix" {
  description = "Key prefix receiver writes under; the same value as the destination's prefix. Empty for the whole bucket."
  type        = string
  default     = "images/"

  validation {
    condition     = var.prefix == "" || (endswith(var.prefix, "/") && !startswith(var.prefix, "/"))
    error_message = "prefix must be empty or end with '/' (and not start with one)."
  }
}

variable "expire_after_days" {
  description = "Delete archived objects this many days after creation; null keeps them forever."
  type        = number
  default     = null

  validation {
    condition     = var.expire_after_days == null || try(var.expire_after_days >= 1, false)
    error_message = "expire_after_days must be null or at least 1."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for SSE-KMS; null uses SSE-S3 (AES256) and needs no KMS grants."
  type        = string
  default     = null
}

variable "head_then_put" {
  description = "Set when the destination runs with conditional_writes = false: its existence check (HeadObject) must see 404 for a missing key, which S3 only returns to callers holding s3:ListBucket."
  type        = bool
  default     = false
}

variable "role_name" {
  description = "IAM role to attach the receiver policy to (e.g. the service's IRSA or ECS task role); null only creates the policy."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
