def test_backend(api, backend):
    r = api.post("/conversations/new", {"prompt": "hi there"}, format="json")
    assert r.status_code == 201, r.json()
    assert r.json()["response"]["message"] == "Reply 1 to: hi there"
    assert backend.last_messages == [{"role": "user", "content": "hi there"}]
