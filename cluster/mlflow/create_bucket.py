#!/usr/bin/env python3
"""Creates the artifact store's bucket if it is missing, waiting for the store to answer.

Usage: create-bucket BUCKET. The endpoint comes from MLFLOW_S3_ENDPOINT_URL and the
credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, as for the MLflow server.
"""

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

ATTEMPTS = 30  # one every 2 s: the store may still be starting


def main(bucket: str) -> None:
    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
    for attempt in range(ATTEMPTS):
        try:
            s3.head_bucket(Bucket=bucket)
            print(f"bucket {bucket} exists")
            return
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
                raise
            s3.create_bucket(Bucket=bucket)
            print(f"bucket {bucket} created")
            return
        except EndpointConnectionError:
            time.sleep(2)
    sys.exit(f"the object store at {os.environ['MLFLOW_S3_ENDPOINT_URL']} did not answer")


if __name__ == "__main__":
    main(sys.argv[1])
