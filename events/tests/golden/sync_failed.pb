$01900000-0000-7000-8000-000000000006repo/team-a/blueprints (2†ÊâÐ€åšw:$01900000-0000-7000-8000-00000000c0deB$01900000-0000-7000-8000-00000000c0deJalice@example.comR9
700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01ZQ2O
network<cannot reach https://git.example.com/platform/blueprints.gitžÊâÐ