SELECT pg_notify('bench', '{"origin":"9f0c1b1e-0000-0000-0000-000000000000","event":{"type":"delta","stream":"9f0c1b1e-0000-0000-0000-000000000001","seq":12,"text":" refunds take five"}}');
