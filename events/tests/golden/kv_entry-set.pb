$01900000-0000-7000-8000-000000000020repo/team-a/blueprints (2”ÊâÐ€åšw:$01900000-0000-7000-8000-00000000c0deB$01900000-0000-7000-8000-00000000c0deJalice@example.comR9
700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01ZG¢D
user:123profile{"name":"Alice"} *profile*user0Ø®Ûâ­08Ø‹·ä­0