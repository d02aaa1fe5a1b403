"""The client packages people already use, unchanged, against a real server process: each sends what it really
sends (its own paths, fields, encodings and auth header), and its answers are checked against plain
transformers on the same store folders.

Proven here, with the versions pinned in pyproject's dev extra: openai (embeddings as base64, its default,
and as floats; token-id inputs; 2,048-input requests; models.list(); its error classes), langchain-openai's
OpenAIEmbeddings (token arrays from a local tiktoken encoding, 1,000 inputs a request), huggingface_hub's
InferenceClient against the root URL (feature_extraction, text_classification, sentence_similarity), cohere's
Client with base_url (rerank by a cross-encoder and by an embedding model) and tritonclient's HTTP client
(KServe v2 infer with BYTES, sent in its default binary form)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.protocols.common import AUTH, DOCUMENTS, KEY, PROMPTS, QUERY, TEXTS

ATOL = 2e-5


# ---- OpenAI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_client(protocol_server):
    from openai import OpenAI

    return OpenAI(api_key=KEY, base_url=f"{protocol_server}/v1", max_retries=0)


def test_openai_embeddings_default_base64_and_float(openai_client, reference):
    expected = reference.embed(TEXTS).numpy()
    packed = openai_client.embeddings.create(model="minilm", input=TEXTS)  # the client asks for base64
    floats = openai_client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    for response in (packed, floats):
        assert response.model == "minilm" and [item.index for item in response.data] == [0, 1, 2]
        np.testing.assert_allclose([item.embedding for item in response.data], expected, atol=ATOL)
    tokens = sum(len(ids) for ids in reference.tokenizer(TEXTS)["input_ids"])
    assert packed.usage.prompt_tokens == tokens


def test_openai_token_ids_embed_as_their_text(openai_client, reference):
    ids = [reference.tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    many = openai_client.embeddings.create(model="minilm", input=ids)
    one = openai_client.embeddings.create(model="minilm", input=ids[0])
    expected = reference.embed(TEXTS).numpy()
    np.testing.assert_allclose([item.embedding for item in many.data], expected, atol=ATOL)
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=ATOL)


def test_openai_takes_2048_inputs_in_one_request(openai_client):
    texts = [f"{word} day" for word in ("good", "bad", "pill", "sleep")] * 512
    response = openai_client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    assert len(response.data) == 2048 and response.data[-1].index == 2047
    np.testing.assert_allclose(response.data[0].embedding, response.data[4].embedding, atol=1e-6)


def test_openai_errors_are_openais(openai_client, protocol_server):
    import openai

    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.embeddings.create(model="minilm", input=[[5, 10**6]])
    assert bad.value.status_code == 400
    assert bad.value.body["type"] == "invalid_request_error" and "vocabulary" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as schema:
        openai_client.embeddings.create(model="minilm", input="x", extra_body={"bogus": 1})
    assert schema.value.body["param"] == "bogus"
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.embeddings.create(model="gpt-nothing", input="x")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        openai_client.models.retrieve("gpt-nothing")
    assert unknown.value.body["code"] == "model_not_found"
    wrong_key = openai.OpenAI(api_key="nope", base_url=f"{protocol_server}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong_key.models.list()
    assert denied.value.body["code"] == "invalid_api_key"


def test_openai_models_list(openai_client):
    models = {model.id: model for model in openai_client.models.list()}
    assert set(models) == {"minilm", "ce", "sentiment"}
    assert models["minilm"].object == "model" and models["minilm"].created > 1_700_000_000
    assert openai_client.models.retrieve("ce").created == models["ce"].created


# ---- LangChain -----------------------------------------------------------------------------------


@pytest.fixture()
def local_tiktoken(reference, monkeypatch):
    """tiktoken cannot download its BPE files here: its cache of built encodings gets one made from the
    model's own vocabulary (whole words and letters), under the name langchain falls back to."""
    import tiktoken
    import tiktoken.registry

    vocab = reference.tokenizer.get_vocab()
    ranks = {token.encode(): i for token, i in vocab.items() if token.isalpha()}
    encoding = tiktoken.Encoding(
        name="cl100k_base", pat_str=r"[a-z]+", mergeable_ranks=ranks, special_tokens={}
    )
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "cl100k_base", encoding)
    return encoding


def test_langchain_openai_embeddings_with_token_arrays(protocol_server, reference, local_tiktoken):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model="minilm", base_url=f"{protocol_server}/v1", api_key=KEY, max_retries=0
    )
    assert embeddings.check_embedding_ctx_length and embeddings.chunk_size == 1000  # its defaults
    documents = TEXTS * 400  # 1,200 texts: one request of 1,000 token arrays, then one of 200
    vectors = np.array(embeddings.embed_documents(documents))
    expected = reference.embed(TEXTS).numpy()
    np.testing.assert_allclose(vectors[:3], expected, atol=1e-4)
    np.testing.assert_allclose(vectors[-3:], expected, atol=1e-4)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[1]), expected[1], atol=1e-4)


# ---- Hugging Face InferenceClient (TEI's API at the root) ------------------------------------------


@pytest.fixture(scope="module")
def hf_client(protocol_server):
    from huggingface_hub import InferenceClient

    return InferenceClient(model=protocol_server, token=KEY)


def test_hf_feature_extraction(hf_client, reference):
    vector = hf_client.feature_extraction(TEXTS[0])
    np.testing.assert_allclose(vector, reference.embed(TEXTS[:1]).numpy(), atol=ATOL)
    batch = hf_client.feature_extraction(TEXTS, normalize=False, truncate=True, truncation_direction="left")
    np.testing.assert_allclose(batch, reference.embed(TEXTS, normalize=False).numpy(), atol=1e-4)
    prompted = hf_client.feature_extraction(TEXTS[0], prompt_name="query")
    expected = reference.embed([PROMPTS["query"] + TEXTS[0]]).numpy()
    np.testing.assert_allclose(prompted, expected, atol=ATOL)
    assert not np.allclose(prompted, vector, atol=1e-3)


def test_hf_text_classification(hf_client, reference):
    answer = hf_client.text_classification(TEXTS[1])
    expected = reference.classify(TEXTS[1])
    assert [item.label for item in answer] == sorted(expected, key=expected.get, reverse=True)
    for item in answer:
        assert item.score == pytest.approx(expected[item.label], abs=1e-5)
    assert len(hf_client.text_classification(TEXTS[1], top_k=1)) == 1


def test_hf_sentence_similarity(hf_client, reference):
    scores = hf_client.sentence_similarity(QUERY, other_sentences=DOCUMENTS)
    assert scores == pytest.approx(reference.cosine_scores(QUERY, DOCUMENTS), abs=1e-5)


# ---- Cohere --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohere_client(protocol_server):
    import cohere

    return cohere.Client(api_key=KEY, base_url=protocol_server)


@pytest.mark.parametrize("model", ["ce", "minilm"])
def test_cohere_rerank(cohere_client, reference, model):
    response = cohere_client.rerank(
        model=model, query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True
    )
    if model == "ce":
        expected = reference.cross_scores(QUERY, DOCUMENTS)
    else:
        expected = reference.cosine_scores(QUERY, DOCUMENTS)
    best = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])[:2]
    assert [result.index for result in response.results] == best
    for result in response.results:
        assert result.relevance_score == pytest.approx(expected[result.index], abs=1e-5)
        assert result.document.text == DOCUMENTS[result.index]
    assert response.dict()["scoring"] == ("cross-encoder" if model == "ce" else "cosine")


@pytest.mark.parametrize("model", ["ce", "minilm"])
def test_cohere_v2_rerank(protocol_server, reference, model):
    import cohere

    client = cohere.ClientV2(api_key=KEY, base_url=protocol_server)
    response = client.rerank(model=model, query=QUERY, documents=DOCUMENTS, top_n=2)
    expected = (reference.cross_scores if model == "ce" else reference.cosine_scores)(QUERY, DOCUMENTS)
    assert [result.index for result in response.results] == sorted(range(3), key=lambda i: -expected[i])[:2]
    for result in response.results:
        assert result.relevance_score == pytest.approx(expected[result.index], abs=1e-5)


# ---- KServe / Triton -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(protocol_server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=protocol_server.removeprefix("http://"))


# tritonclient adds its Inference-Header-Content-Length to the headers dict it is given: a fresh one each call


def _texts_input(texts: list[str]):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))  # binary by default
    return tensor


def test_triton_classify(triton, reference):
    assert triton.is_server_live() and triton.is_server_ready()  # open, as probes need
    assert triton.is_model_ready("sentiment", headers=dict(AUTH))
    metadata = triton.get_model_metadata("sentiment", headers=dict(AUTH))
    labels = metadata["parameters"]["labels"]
    result = triton.infer("sentiment", [_texts_input(TEXTS[:2])], headers=dict(AUTH))
    scores = result.as_numpy("scores")
    assert scores.dtype == np.float32 and scores.shape == (2, len(labels))
    for row, text, label, best in zip(
        scores, TEXTS, result.as_numpy("label"), result.as_numpy("score"), strict=False
    ):
        expected = reference.classify(text)
        np.testing.assert_allclose(row, [expected[name] for name in labels], atol=1e-5)
        assert str(label) == max(expected, key=expected.get) and best == pytest.approx(row.max())


def test_triton_embeddings_and_errors(triton, reference):
    from tritonclient.utils import InferenceServerException

    result = triton.infer("minilm", [_texts_input(TEXTS)], model_version="1", headers=dict(AUTH))
    vectors = result.as_numpy("embedding")
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, reference.embed(TEXTS).numpy(), atol=ATOL)
    with pytest.raises(InferenceServerException, match="not found"):
        triton.infer("nothing-here", [_texts_input(TEXTS)], headers=dict(AUTH))
    with pytest.raises(InferenceServerException, match="API key"):
        triton.infer("minilm", [_texts_input(TEXTS)])
