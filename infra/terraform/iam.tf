# What receiver's S3 destination (receiver/destinations/s3.py) needs on its prefix, and nothing
# more. boto3 call -> IAM action:
#   put_object, create_multipart_upload, upload_part, complete_multipart_upload -> s3:PutObject
#   abort_multipart_upload                                                       -> s3:AbortMultipartUpload
#   get_object, head_object, presigned get_object URLs                           -> s3:GetObject
#   delete_object (the probe of `receiver check`)                                -> s3:DeleteObject
#   head_object of a missing key (head-then-put mode only) answers 404, not 403,
#   only with                                                                    -> s3:ListBucket
# tests/unit/test_infra.py derives the same set from the source and compares.

locals {
  objects_arn = "${aws_s3_bucket.archive.arn}/${var.prefix}*"
}

data "aws_iam_policy_document" "receiver" {
  statement {
    sid    = "ArchiveObjects"
    effect = "Allow"
    actions = [
      "s3:PutObject",
      "s3:GetObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = [local.objects_arn]
  }

  dynamic "statement" {
    for_each = var.head_then_put ? [1] : []

    content {
      sid       = "ExistenceChecks"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = [aws_s3_bucket.archive.arn]
    }
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid    = "ArchiveKey"
      effect = "Allow"
      # GenerateDataKey to write (also each multipart part), Decrypt to read and to complete a
      # multipart upload.
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "receiver" {
  name        = "${var.bucket_name}-receiver"
  description = "receiver: archive images and sidecars under s3://${var.bucket_name}/${var.prefix}"
  policy      = data.aws_iam_policy_document.receiver.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "receiver" {
  count = var.role_name == null ? 0 : 1

  role       = var.role_name
  policy_arn = aws_iam_policy.receiver.arn
}
