select id, Name,email
from users u
where u.active = 1 and u.created_at<'2023-06-30'
order by 2
