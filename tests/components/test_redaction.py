from components.tracking.redaction import MASK, redact


def test_secret_keys_and_url_passwords_are_masked_at_any_depth():
    config = {
        "tracking": {"password": "hunter2", "api_key": "abc", "aws_secret_access_key": "k", "token": "t"},
        "storage": "s3://user:s3cr3t@bucket/path",
        "db": {"uri": "postgresql://tvp:pw@127.0.0.1/mlflow"},
        "model": {"text": {"context_length": 16, "vocab_size": 512}},
        "tokenizer_vocab": 512,
        "tokens": [1, 2],
        "empty_password": "",
        "hosts": ["http://a:b@host", {"secret": "x"}],
    }
    out = redact(config)
    assert out["tracking"] == {"password": MASK, "api_key": MASK, "aws_secret_access_key": MASK, "token": MASK}
    assert out["storage"] == f"s3://user:{MASK}@bucket/path"
    assert out["db"]["uri"] == f"postgresql://tvp:{MASK}@127.0.0.1/mlflow"
    assert out["model"] == config["model"] and out["tokenizer_vocab"] == 512 and out["tokens"] == [1, 2]
    assert out["empty_password"] == ""
    assert out["hosts"] == [f"http://a:{MASK}@host", {"secret": MASK}]
    assert config["tracking"]["password"] == "hunter2"  # the input is left alone
