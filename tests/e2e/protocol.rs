//! The V2 REST protocol: routes, request forms, datatypes, and the error for each bad request.

use serde_json::{Value, json};

use crate::support::{TestServer, error_message, faulty, iris};

fn servers() -> TestServer {
    TestServer::start(&[iris(), faulty("echo", "echo", "")])
}

fn one_row(datatype: &str, data: Value) -> Value {
    json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": datatype, "data": data }] })
}

#[test]
fn server_routes_answer_json_with_status_as_truth() {
    let server = servers();
    let (status, body) = server.get("/v2");
    assert_eq!(status, 200);
    assert_eq!(body["name"], "weir");
    assert!(body["version"].is_string() && body["extensions"].is_array());
    assert_eq!(
        server.get("/v2/health/live"),
        (200, json!({ "live": true }))
    );
    assert_eq!(
        server.get("/v2/health/ready"),
        (200, json!({ "ready": true }))
    );
}

#[test]
fn model_metadata_and_readiness_on_both_route_forms() {
    let server = servers();
    for path in ["/v2/models/iris", "/v2/models/iris/versions/1"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["name"], "iris");
        assert_eq!(body["versions"], json!(["1"]));
        assert_eq!(
            body["inputs"],
            json!([{ "name": "features", "datatype": "FP32", "shape": [-1, 4] }])
        );
        assert_eq!(
            body["outputs"][0],
            json!({ "name": "label", "datatype": "BYTES", "shape": [-1] })
        );
        assert_eq!(body["outputs"][1]["name"], "probabilities");
        let (status, body) = server.get(&format!("{path}/ready"));
        assert_eq!(
            (status, body),
            (200, json!({ "name": "iris", "ready": true }))
        );
    }
}

#[test]
fn unknown_model_version_and_route_are_404_naming_them() {
    let server = servers();
    let (status, body) = server.get("/v2/models/nope");
    assert_eq!(status, 404);
    assert!(error_message(&body).contains("'nope'"), "{body}");
    let (status, body) = server.post_json(
        "/v2/models/iris/versions/7/infer",
        &one_row("FP32", json!([1, 2, 3, 4])),
    );
    assert_eq!(status, 404);
    assert!(error_message(&body).contains("'7'"), "{body}");
    let (status, body) = server.get("/v2/models/iris/versions/7/ready");
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.get("/v3/whatever");
    assert_eq!(status, 404);
    assert!(error_message(&body).contains("/v3/whatever"));
    let (status, body) = server.get("/v2/models/iris/infer");
    assert_eq!(status, 405, "{body}");
}

#[test]
fn infer_echoes_id_names_model_and_version_and_honours_outputs() {
    let server = servers();
    let mut request = one_row("FP32", json!([5.1, 3.5, 1.4, 0.2]));
    request["id"] = json!("req-42");
    request["outputs"] = json!([{ "name": "label" }]);
    for path in ["/v2/models/iris/infer", "/v2/models/iris/versions/1/infer"] {
        let (status, body) = server.post_json(path, &request);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], "req-42");
        assert_eq!(body["model_name"], "iris");
        assert_eq!(body["model_version"], "1");
        assert_eq!(
            body["outputs"],
            json!([{ "name": "label", "datatype": "BYTES", "shape": [1], "data": ["setosa"] }])
        );
    }
    request["outputs"] = json!([{ "name": "probabilities" }, { "name": "label" }]);
    let (_, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(body["outputs"][0]["name"], "probabilities");
    assert_eq!(body["outputs"][1]["name"], "label");
    request["outputs"] = json!([{ "name": "score" }]);
    let (status, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(status, 400);
    assert!(
        error_message(&body).contains("unknown output 'score'"),
        "{body}"
    );
}

#[test]
fn flat_and_nested_data_are_the_same_request() {
    let server = servers();
    let flat = json!({ "inputs": [{ "name": "features", "shape": [2, 4], "datatype": "FP64",
        "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3] }] });
    let nested = json!({ "inputs": [{ "name": "features", "shape": [2, 4], "datatype": "FP64",
        "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]] }] });
    let (s1, b1) = server.post_json("/v2/models/iris/infer", &flat);
    let (s2, b2) = server.post_json("/v2/models/iris/infer", &nested);
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1["outputs"], b2["outputs"]);
    assert_eq!(b1["outputs"][0]["data"], json!(["setosa", "virginica"]));
}

/// Each bad request, the status it must get, and a fragment the message must contain.
const BAD_REQUESTS: &[(&str, u16, &str)] = &[
    ("{not json", 400, "invalid inference request JSON"),
    (
        r#"{"inputs": "features"}"#,
        400,
        "invalid inference request JSON",
    ),
    (r#"{"id": "x"}"#, 400, "missing field `inputs`"),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}"#,
        400,
        "needs 4 elements, data has 3",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#,
        400,
        "does not match shape",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,[4]]]}]}"#,
        400,
        "does not match shape",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[-1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
        400,
        "negative dimension",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1099511627776,1099511627776],"datatype":"FP32","data":[1]}]}"#,
        400,
        "too many elements",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP99","data":[1,2,3,4]}]}"#,
        400,
        "unknown datatype 'FP99'",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP16","data":[1,2,3,4]}]}"#,
        400,
        "FP16 has no JSON form",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32"}]}"#,
        400,
        "input 'features': has no data",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,"3",4]}]}"#,
        400,
        "element 2 is a string",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,true,4]}]}"#,
        400,
        "element 2 is a boolean",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,1e300,4]}]}"#,
        400,
        "out of range for FP32",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3,NaN]}]}"#,
        400,
        "invalid inference request JSON",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":5}]}"#,
        400,
        "data must be an array",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
        400,
        "more than once",
    ),
    (
        r#"{"inputs":[{"name":"petal_len","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
        400,
        "unknown input 'petal_len' (expected: features); missing input 'features'",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[4],"datatype":"INT32","data":[1,2,3,4]}]}"#,
        400,
        "datatype INT32, expected FP32 or FP64; input 'features' has shape [4]",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"probabilities"},{"name":"probabilities"}]}"#,
        400,
        "output 'probabilities' appears more than once",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[4194304,4],"datatype":"FP32","data":[1]}]}"#,
        400,
        "has 16777216 elements, over this pipeline's limit of 2097152 (limits.max_tensor_elements)",
    ),
    (
        r#"{"inputs":[{"name":"features","shape":[4611686018427387904,0],"datatype":"FP32","data":[]}]}"#,
        400,
        "has dimensions that no tensor within this pipeline's limit of 2097152 elements has",
    ),
];

#[test]
fn every_bad_request_gets_its_status_and_a_message_naming_the_cause() {
    let server = servers();
    for (body, want_status, fragment) in BAD_REQUESTS {
        let (status, response) = server.post("/v2/models/iris/infer", *body);
        assert_eq!(status, *want_status, "{body} -> {response}");
        let message = error_message(&response);
        assert!(
            message.contains(fragment),
            "{body}: '{message}' lacks '{fragment}'"
        );
    }
    let (status, _) = server.post_json(
        "/v2/models/iris/infer",
        &one_row("FP32", json!([5.1, 3.5, 1.4, 0.2])),
    );
    assert_eq!(
        status, 200,
        "the server still serves after every bad request"
    );
}

fn le_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn binary_tensors_in_and_out_as_tritonclient_sends_them() {
    let server = servers();
    let header = json!({
        "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32",
                     "parameters": { "binary_data_size": 16 } }],
        "outputs": [{ "name": "label", "parameters": { "binary_data": true } },
                    { "name": "probabilities", "parameters": { "binary_data": false } }],
    });
    let (status, json_part, binary) = server.post_binary(
        "/v2/models/iris/infer",
        &header,
        &le_f32(&[5.1, 3.5, 1.4, 0.2]),
    );
    assert_eq!(status, 200, "{json_part}");
    let label = &json_part["outputs"][0];
    assert_eq!(label["parameters"]["binary_data_size"], 10);
    assert!(label.get("data").is_none());
    assert_eq!(binary, b"\x06\0\0\0setosa");
    assert_eq!(json_part["outputs"][1]["data"].as_array().unwrap().len(), 3);

    // binary_data_output: every output in binary, in order.
    let header = json!({
        "parameters": { "binary_data_output": true },
        "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32",
                     "parameters": { "binary_data_size": 16 } }],
    });
    let (status, json_part, binary) = server.post_binary(
        "/v2/models/iris/infer",
        &header,
        &le_f32(&[6.7, 3.0, 5.2, 2.3]),
    );
    assert_eq!(status, 200, "{json_part}");
    assert_eq!(
        json_part["outputs"][1]["parameters"]["binary_data_size"],
        12
    );
    assert_eq!(binary.len(), 4 + 9 + 12);
    assert_eq!(&binary[..13], b"\x09\0\0\0virginica");
}

#[test]
fn fp16_and_bf16_travel_in_binary_form() {
    let server = servers();
    let raw = [0x00, 0x3c, 0x00, 0xc0, 0x80, 0x3f, 0x00, 0x40];
    let header = json!({
        "parameters": { "binary_data_output": true },
        "inputs": [
            { "name": "h", "shape": [2], "datatype": "FP16", "parameters": { "binary_data_size": 4 } },
            { "name": "b", "shape": [2], "datatype": "BF16", "parameters": { "binary_data_size": 4 } },
        ],
    });
    let (status, json_part, binary) = server.post_binary("/v2/models/echo/infer", &header, &raw);
    assert_eq!(status, 200, "{json_part}");
    assert_eq!(json_part["outputs"][0]["datatype"], "FP16");
    assert_eq!(json_part["outputs"][1]["datatype"], "BF16");
    assert_eq!(binary, raw);
}

#[test]
fn malformed_binary_bodies_are_400_naming_the_problem() {
    let server = servers();
    let input = |size: u64| {
        json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32",
                                                  "parameters": { "binary_data_size": size } }] })
    };
    let four = le_f32(&[5.1, 3.5, 1.4, 0.2]);
    let cases: [(Value, Vec<u8>, &str); 4] = [
        (
            input(12),
            four[..12].to_vec(),
            "4 FP32 elements take 16 bytes, binary_data_size is 12",
        ),
        (
            input(16),
            four[..8].to_vec(),
            "only 8 bytes of binary data remain",
        ),
        (
            input(16),
            [four.clone(), vec![0; 3]].concat(),
            "3 bytes of binary data follow",
        ),
        (
            json!({ "inputs": [{ "name": "s", "shape": [2], "datatype": "BYTES",
                              "parameters": { "binary_data_size": 9 } }] }),
            b"\x01\0\0\0a\x09\0\0\0".to_vec(),
            "truncated BYTES element",
        ),
    ];
    for (header, binary, fragment) in cases {
        let path = if header["inputs"][0]["name"] == "s" {
            "/v2/models/echo/infer"
        } else {
            "/v2/models/iris/infer"
        };
        let (status, body, _) = server.post_binary(path, &header, &binary);
        assert_eq!(status, 400, "{body}");
        assert!(
            error_message(&body).contains(fragment),
            "'{body}' lacks '{fragment}'"
        );
    }
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/v2/models/iris/infer", server.base))
        .header("Inference-Header-Content-Length", "999")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(
        response
            .text()
            .unwrap()
            .contains("the body has only 2 bytes")
    );
}

#[test]
fn bodies_over_the_limit_are_413() {
    let server = TestServer::with_body_limit(&[iris()], 1024);
    let data: Vec<f64> = vec![1.0; 4 * 100];
    let request = json!({ "inputs": [{ "name": "features", "shape": [100, 4], "datatype": "FP64", "data": data }] });
    let (status, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(status, 413);
    assert!(error_message(&body).contains("1024 bytes"), "{body}");
}

/// Every JSON-representable datatype, with values at its edges, survives decode → component
/// → encode unchanged.
#[test]
fn every_json_datatype_round_trips_through_a_component() {
    let server = servers();
    let cases = [
        ("BOOL", json!([true, false, true])),
        ("UINT8", json!([0, 1, 255])),
        ("UINT16", json!([0, 1, 65535])),
        ("UINT32", json!([0, 1, 4294967295u64])),
        ("UINT64", json!([0, 1, u64::MAX])),
        ("INT8", json!([-128, 0, 127])),
        ("INT16", json!([-32768, 0, 32767])),
        ("INT32", json!([-2147483648i64, 0, 2147483647])),
        ("INT64", json!([i64::MIN, 0, i64::MAX])),
        ("FP32", json!([-1.5, 0.0, 3.25])),
        ("FP64", json!([-1e300, 0.1, 2.5e-300])),
        ("BYTES", json!(["", "iris setosa", "ünïcødé ✓"])),
    ];
    let inputs: Vec<Value> = cases
        .iter()
        .map(|(dt, data)| json!({ "name": format!("x_{dt}"), "shape": [3], "datatype": dt, "data": data }))
        .collect();
    let (status, body) = server.post_json("/v2/models/echo/infer", &json!({ "inputs": inputs }));
    assert_eq!(status, 200, "{body}");
    let outputs = body["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), cases.len());
    for ((dt, data), output) in cases.iter().zip(outputs) {
        assert_eq!(output["name"], format!("x_{dt}"));
        assert_eq!(output["datatype"], *dt);
        assert_eq!(output["shape"], json!([3]));
        assert_eq!(&output["data"], data, "{dt}");
    }
}

#[test]
fn integers_refuse_fractions_and_out_of_range_values_naming_the_index() {
    let server = servers();
    let cases = [
        (
            "INT32",
            json!([1, 2.5]),
            "element 1 is a number (2.5), expected an integer",
        ),
        ("UINT8", json!([1, 256]), "element 1 (256) is out of range"),
        ("UINT64", json!([-1]), "element 0 (-1) is out of range"),
        ("INT8", json!(["1"]), "element 0 is a string"),
        ("BOOL", json!([1]), "expected true or false"),
        ("BYTES", json!([1]), "expected a string"),
    ];
    for (dt, data, fragment) in cases {
        let n = data.as_array().unwrap().len();
        let request =
            json!({ "inputs": [{ "name": "x", "shape": [n], "datatype": dt, "data": data }] });
        let (status, body) = server.post_json("/v2/models/echo/infer", &request);
        assert_eq!(status, 400, "{dt}: {body}");
        let message = error_message(&body);
        assert!(
            message.contains("input 'x'") && message.contains(fragment),
            "{dt}: {message}"
        );
    }
}

#[test]
fn request_parameters_reach_the_stages_and_unknown_ones_are_harmless() {
    let server = servers();
    let mut request = one_row("FP32", json!([5.1, 3.5, 1.4, 0.2]));
    request["parameters"] =
        json!({ "binary_data_output": false, "content_type": "np", "priority": 3 });
    request["inputs"][0]["parameters"] = json!({ "content_type": "np" });
    let (status, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(status, 200, "{body}");
}

/// Requests whose shape, rank, input count or parameters no stage should have to handle are
/// refused before any stage sees them, on a pipeline that declares no inputs as on one that
/// does.
#[test]
fn requests_too_odd_or_too_many_for_any_stage_are_refused_before_the_stages() {
    let server = servers();
    let tensor =
        |shape: Value| json!({ "name": "x", "shape": shape, "datatype": "INT8", "data": [] });
    let many_parameters: serde_json::Map<String, Value> =
        (0..300).map(|i| (format!("p{i}"), json!(i))).collect();
    let cases = [
        (
            json!({ "inputs": [tensor(json!([4_611_686_018_427_387_904u64, 0]))] }),
            "has dimensions that no tensor",
        ),
        (
            json!({ "inputs": [tensor(json!(vec![1; 65]))] }),
            "shape has 65 dimensions; at most 64",
        ),
        (
            json!({ "inputs": (0..1025).map(|i| json!({ "name": format!("x{i}"), "shape": [0], "datatype": "INT8", "data": [] })).collect::<Vec<_>>() }),
            "the request has 1025 inputs; at most 1024",
        ),
        (
            json!({ "parameters": many_parameters, "inputs": [tensor(json!([0]))] }),
            "the request has 300 parameters; at most 256",
        ),
        (
            json!({ "parameters": { "note": "x".repeat(70_000) }, "inputs": [tensor(json!([0]))] }),
            "the request's parameters take 70004 bytes; at most 65536",
        ),
    ];
    for (request, fragment) in cases {
        let (status, body) = server.post_json("/v2/models/echo/infer", &request);
        assert_eq!(status, 400, "{fragment}: {body}");
        assert!(
            error_message(&body).contains(fragment),
            "{fragment}: {body}"
        );
    }
}

#[test]
fn an_empty_batch_gets_empty_outputs() {
    let server = servers();
    let request = json!({ "inputs": [{ "name": "features", "shape": [0, 4], "datatype": "FP32", "data": [] }] });
    let (status, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([0]));
    assert_eq!(body["outputs"][1]["shape"], json!([0, 3]));
}

#[test]
fn a_response_over_the_limit_is_413_naming_it() {
    let mut options = crate::support::Options::default();
    options.limits.max_response_bytes = 10_000;
    let server = TestServer::with_options(&[iris()], options);
    let rows: Vec<[f32; 4]> = vec![[5.1, 3.5, 1.4, 0.2]; 400];
    let request = json!({ "inputs": [{ "name": "features", "shape": [400, 4], "datatype": "FP32", "data": rows }] });
    let (status, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(status, 413, "{body}");
    assert!(
        error_message(&body)
            .contains("over the limit of 10000 bytes (weir serve --max-response-bytes)"),
        "{body}"
    );
    let (status, body) = server.post_json(
        "/v2/models/iris/infer",
        &one_row("FP32", json!([5.1, 3.5, 1.4, 0.2])),
    );
    assert_eq!(status, 200, "{body}");
}
