output "bucket" {
  description = "RECEIVER_DESTINATIONS__<NAME>__BUCKET"
  value       = aws_s3_bucket.archive.id
}

output "region" {
  description = "RECEIVER_DESTINATIONS__<NAME>__REGION"
  value       = aws_s3_bucket.archive.region
}

output "prefix" {
  description = "RECEIVER_DESTINATIONS__<NAME>__PREFIX"
  value       = var.prefix
}

output "policy_arn" {
  description = "The least-privilege policy for the receiver's role or user."
  value       = aws_iam_policy.receiver.arn
}
