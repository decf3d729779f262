$01900000-0000-7000-8000-000000000011repo/team-a/blueprints (2‹ÊâÐ€åšw:$01900000-0000-7000-8000-00000000c0deB$01900000-0000-7000-8000-00000000c0deJalice@example.comR9
700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01ZžZ›
˜
(blueprints.catalog.namespace.basens.ws-7catalog/namespacebasens"ws-72Draft:(7b5e4b0c2a7c9f4d3e1a6b8c0d2e4f6a8b0c2d4eBR
KptfileGsha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7aeBY
namespace.yamlGsha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9Z7
init/{"type":"init","init":{"description":"basens"}}Z$
patch{"type":"patch","patch":{}}b
tierbase